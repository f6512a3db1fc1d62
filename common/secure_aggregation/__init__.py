"""Secure aggregation (SecAgg+) shared by server and sites: parameters, math, crypto and wire
format.

The modules, one concept each:

- ``arithmetic``: Arithmetic of secure aggregation: quantisation to uint32 and cryptographic
  masks.
- ``bundle``: The shares one site gives one member of its group in a round, and their byte
  layout.
- ``config``: The parameters of one secure-aggregation (SecAgg+) session, shared by the server
  and sites.
- ``crypto``: Key agreement, encryption and secret sharing for secure aggregation.
- ``roster``: Secure aggregation bound to the study's roster (issue 19, F2, F6, F12).
- ``wire``: Secure-aggregation messages as Flower ConfigRecord values, and back, validated.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.common.secure_aggregation.arithmetic import (
        MASK_KEY_BYTES as MASK_KEY_BYTES,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        add_mask as add_mask,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        dequantise_sum as dequantise_sum,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        derive_key as derive_key,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        mask_stream as mask_stream,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        pair_mask_key as pair_mask_key,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        quantisation_levels as quantisation_levels,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        quantise as quantise,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        self_mask_key as self_mask_key,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        subtract_mask as subtract_mask,
    )
    from consortia.common.secure_aggregation.arithmetic import (
        sum_error_bound as sum_error_bound,
    )
    from consortia.common.secure_aggregation.bundle import (
        ShareBundle as ShareBundle,
    )
    from consortia.common.secure_aggregation.bundle import (
        open_bundle as open_bundle,
    )
    from consortia.common.secure_aggregation.bundle import (
        seal_bundle as seal_bundle,
    )
    from consortia.common.secure_aggregation.config import (
        MAX_PARTICIPANTS as MAX_PARTICIPANTS,
    )
    from consortia.common.secure_aggregation.config import (
        MODULUS_BITS as MODULUS_BITS,
    )
    from consortia.common.secure_aggregation.config import (
        PROTOCOL as PROTOCOL,
    )
    from consortia.common.secure_aggregation.config import (
        ConfigValue as ConfigValue,
    )
    from consortia.common.secure_aggregation.config import (
        SecAggConfig as SecAggConfig,
    )
    from consortia.common.secure_aggregation.config import (
        SecAggError as SecAggError,
    )
    from consortia.common.secure_aggregation.config import (
        default_threshold as default_threshold,
    )
    from consortia.common.secure_aggregation.config import (
        group_size as group_size,
    )
    from consortia.common.secure_aggregation.crypto import (
        PRIVATE_KEY_BYTES as PRIVATE_KEY_BYTES,
    )
    from consortia.common.secure_aggregation.crypto import (
        PUBLIC_KEY_BYTES as PUBLIC_KEY_BYTES,
    )
    from consortia.common.secure_aggregation.crypto import (
        combine_secret as combine_secret,
    )
    from consortia.common.secure_aggregation.crypto import (
        ecdh_secret as ecdh_secret,
    )
    from consortia.common.secure_aggregation.crypto import (
        encryption_key as encryption_key,
    )
    from consortia.common.secure_aggregation.crypto import (
        generate_private_key as generate_private_key,
    )
    from consortia.common.secure_aggregation.crypto import (
        open_sealed as open_sealed,
    )
    from consortia.common.secure_aggregation.crypto import (
        private_key_bytes as private_key_bytes,
    )
    from consortia.common.secure_aggregation.crypto import (
        private_key_from_bytes as private_key_from_bytes,
    )
    from consortia.common.secure_aggregation.crypto import (
        public_key_bytes as public_key_bytes,
    )
    from consortia.common.secure_aggregation.crypto import (
        public_key_from_bytes as public_key_from_bytes,
    )
    from consortia.common.secure_aggregation.crypto import (
        seal as seal,
    )
    from consortia.common.secure_aggregation.crypto import (
        share_length as share_length,
    )
    from consortia.common.secure_aggregation.crypto import (
        split_secret as split_secret,
    )
    from consortia.common.secure_aggregation.roster import (
        MAX_SESSION_SITES as MAX_SESSION_SITES,
    )
    from consortia.common.secure_aggregation.roster import (
        SESSION_KEYS_DOMAIN as SESSION_KEYS_DOMAIN,
    )
    from consortia.common.secure_aggregation.roster import (
        KeyAdvert as KeyAdvert,
    )
    from consortia.common.secure_aggregation.roster import (
        max_session_sites as max_session_sites,
    )
    from consortia.common.secure_aggregation.roster import (
        roster_refusal as roster_refusal,
    )
    from consortia.common.secure_aggregation.roster import (
        roster_trainers as roster_trainers,
    )
    from consortia.common.secure_aggregation.roster import (
        secure_required as secure_required,
    )
    from consortia.common.secure_aggregation.roster import (
        session_minimum as session_minimum,
    )
    from consortia.common.secure_aggregation.roster import (
        sign_session_keys as sign_session_keys,
    )
    from consortia.common.secure_aggregation.roster import (
        verify_session_keys as verify_session_keys,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_adverts as decode_adverts,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_ciphertexts as decode_ciphertexts,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_public_keys as decode_public_keys,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_round as decode_round,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_unmask_request as decode_unmask_request,
    )
    from consortia.common.secure_aggregation.wire import (
        decode_unmask_shares as decode_unmask_shares,
    )
    from consortia.common.secure_aggregation.wire import (
        encode_ciphertexts as encode_ciphertexts,
    )
    from consortia.common.secure_aggregation.wire import (
        encode_public_keys as encode_public_keys,
    )
    from consortia.common.secure_aggregation.wire import (
        encode_round as encode_round,
    )
    from consortia.common.secure_aggregation.wire import (
        encode_unmask_request as encode_unmask_request,
    )
    from consortia.common.secure_aggregation.wire import (
        encode_unmask_shares as encode_unmask_shares,
    )

__all__ = [
    "MASK_KEY_BYTES",
    "MAX_PARTICIPANTS",
    "MAX_SESSION_SITES",
    "MODULUS_BITS",
    "PRIVATE_KEY_BYTES",
    "PROTOCOL",
    "PUBLIC_KEY_BYTES",
    "SESSION_KEYS_DOMAIN",
    "ConfigValue",
    "KeyAdvert",
    "SecAggConfig",
    "SecAggError",
    "ShareBundle",
    "add_mask",
    "combine_secret",
    "decode_adverts",
    "decode_ciphertexts",
    "decode_public_keys",
    "decode_round",
    "decode_unmask_request",
    "decode_unmask_shares",
    "default_threshold",
    "dequantise_sum",
    "derive_key",
    "ecdh_secret",
    "encode_ciphertexts",
    "encode_public_keys",
    "encode_round",
    "encode_unmask_request",
    "encode_unmask_shares",
    "encryption_key",
    "generate_private_key",
    "group_size",
    "mask_stream",
    "max_session_sites",
    "open_bundle",
    "open_sealed",
    "pair_mask_key",
    "private_key_bytes",
    "private_key_from_bytes",
    "public_key_bytes",
    "public_key_from_bytes",
    "quantisation_levels",
    "quantise",
    "roster_refusal",
    "roster_trainers",
    "seal",
    "seal_bundle",
    "secure_required",
    "self_mask_key",
    "session_minimum",
    "share_length",
    "sign_session_keys",
    "split_secret",
    "subtract_mask",
    "sum_error_bound",
    "verify_session_keys",
]

_EXPORTS = {
    "ConfigValue": "config",
    "KeyAdvert": "roster",
    "MASK_KEY_BYTES": "arithmetic",
    "MAX_PARTICIPANTS": "config",
    "MAX_SESSION_SITES": "roster",
    "MODULUS_BITS": "config",
    "PRIVATE_KEY_BYTES": "crypto",
    "PROTOCOL": "config",
    "PUBLIC_KEY_BYTES": "crypto",
    "SESSION_KEYS_DOMAIN": "roster",
    "SecAggConfig": "config",
    "SecAggError": "config",
    "ShareBundle": "bundle",
    "add_mask": "arithmetic",
    "combine_secret": "crypto",
    "decode_adverts": "wire",
    "decode_ciphertexts": "wire",
    "decode_public_keys": "wire",
    "decode_round": "wire",
    "decode_unmask_request": "wire",
    "decode_unmask_shares": "wire",
    "default_threshold": "config",
    "dequantise_sum": "arithmetic",
    "derive_key": "arithmetic",
    "ecdh_secret": "crypto",
    "encode_ciphertexts": "wire",
    "encode_public_keys": "wire",
    "encode_round": "wire",
    "encode_unmask_request": "wire",
    "encode_unmask_shares": "wire",
    "encryption_key": "crypto",
    "generate_private_key": "crypto",
    "group_size": "config",
    "mask_stream": "arithmetic",
    "max_session_sites": "roster",
    "open_bundle": "bundle",
    "open_sealed": "crypto",
    "pair_mask_key": "arithmetic",
    "private_key_bytes": "crypto",
    "private_key_from_bytes": "crypto",
    "public_key_bytes": "crypto",
    "public_key_from_bytes": "crypto",
    "quantisation_levels": "arithmetic",
    "quantise": "arithmetic",
    "roster_refusal": "roster",
    "roster_trainers": "roster",
    "seal": "crypto",
    "seal_bundle": "bundle",
    "secure_required": "roster",
    "self_mask_key": "arithmetic",
    "session_minimum": "roster",
    "share_length": "crypto",
    "sign_session_keys": "roster",
    "split_secret": "crypto",
    "subtract_mask": "arithmetic",
    "sum_error_bound": "arithmetic",
    "verify_session_keys": "roster",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
