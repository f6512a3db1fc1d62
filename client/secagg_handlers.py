"""The site's side of secure aggregation (SecAgg+ sessions) in the ClientApp.

A session starts with `train.secagg_keys` (fresh key pairs for this run); each round the
ordinary `train` message brings the neighbours' public keys and the round's participants
(`mask_update`), and `train.secagg_unmask` asks for the shares that remove the masks from
the sum. Each message may be handled by a different process: the session's secrets live
in Flower's per-run `context.state`, which never leaves this node.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from consortia.client.secagg_client import SecAggClient
from consortia.common import records as rk
from consortia.common.record_fields import get_config_record
from consortia.common.secagg_config import SecAggConfig, SecAggError
from consortia.common.secagg_wire import (
    decode_public_keys,
    decode_round,
    decode_unmask_request,
    encode_ciphertexts,
    encode_public_keys,
    encode_unmask_shares,
)

__all__ = ["mask_update", "secagg_keys", "secagg_unmask"]

_FROM_SERVER = "the server"


def _save(context: Context, client: SecAggClient) -> None:
    context.state[rk.SECAGG_STATE_KEY] = ConfigRecord(client.to_state())


def _load(context: Context) -> SecAggClient:
    if rk.SECAGG_STATE_KEY not in context.state:
        raise SecAggError(
            "no secure-aggregation session on this node for this run (restarted?); "
            "the server starts a new session"
        )
    return SecAggClient.from_state(dict(context.state[rk.SECAGG_STATE_KEY].items()))


def _reply(msg: Message, values: ConfigRecord) -> Message:
    return Message(RecordDict({rk.SECAGG_KEY: values}), reply_to=msg)


def secagg_keys(msg: Message, context: Context) -> Message:
    """Start a session: fresh key pairs for this run; answer the public halves."""
    config = SecAggConfig.from_config(
        dict(get_config_record(msg.content, rk.SECAGG_CONFIG_KEY).items())
    )
    client, public_keys = SecAggClient.start(config, context.node_id)
    _save(context, client)
    return _reply(msg, ConfigRecord(encode_public_keys({context.node_id: public_keys})))


def mask_update(
    msg: Message, context: Context, round_number: int, vector: np.ndarray
) -> tuple[np.ndarray, ConfigRecord, int]:
    """Inside `train`: the update masked for this round (uint32), the encrypted shares to
    send beside it, and how many values were clipped to the protocol's range."""
    client = _load(context)
    peers = decode_public_keys(get_config_record(msg.content, rk.SECAGG_PEERS_KEY), _FROM_SERVER)
    client.receive_keys(peers)
    secure_round, participants = decode_round(
        get_config_record(msg.content, rk.SECAGG_ROUND_KEY), _FROM_SERVER
    )
    if secure_round != round_number:
        raise SecAggError(
            f"the secure-aggregation round {secure_round} is not the training round {round_number}"
        )
    masked, ciphertexts, clipped = client.mask(round_number, participants, vector)
    _save(context, client)
    return masked, ConfigRecord(encode_ciphertexts(ciphertexts)), clipped


def secagg_unmask(msg: Message, context: Context) -> Message:
    """The shares that remove this round's masks: of the self-mask seed of each site that
    sent its update, of the pairwise keys shared with sites that dropped out."""
    client = _load(context)
    round_number, active, dropped, ciphertexts = decode_unmask_request(
        get_config_record(msg.content, rk.SECAGG_KEY), _FROM_SERVER
    )
    shares = client.unmask(round_number, active, dropped, ciphertexts)
    _save(context, client)  # the session goes on in later rounds
    return _reply(msg, ConfigRecord(encode_unmask_shares(shares)))
