"""The site's side of secure aggregation (SecAgg+ sessions) in the ClientApp.

A session starts with `train.secagg_keys` (fresh key pairs for this run); each round the
ordinary `train` message brings the neighbours' public keys and the round's participants
(`mask_update`), and `train.secagg_unmask` asks for the shares that remove the masks from
the sum. Each message may be handled by a different process: the session's secrets live
in Flower's per-run `context.state`, which never leaves this node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
from consortia.common.settings import RunSettings, run_settings_from_json

__all__ = ["SecureRound", "mask_update", "open_round", "secagg_keys", "secagg_unmask"]

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


def _check_session(config: SecAggConfig, settings: RunSettings) -> None:
    """Refuse a session whose parameters are not those the approved run implies: the
    server must not lower the threshold, change the clipping range or the neighbours, or
    run a session too small for the sum to hide anyone."""
    secure = settings.secure_aggregation
    n = len(config.participants)
    threshold, neighbours = secure.parameters_for(n)
    minimum = secure.min_sites if secure.mode == "auto" else 2
    problems = []
    if n < minimum:
        problems.append(f"{n} sites, the approved run needs at least {minimum}")
    if config.threshold < threshold:
        problems.append(f"threshold {config.threshold}, the approved run implies {threshold}")
    if config.neighbours != neighbours:
        problems.append(f"{config.neighbours} neighbours, the approved run implies {neighbours}")
    if config.clip_range != secure.clip_range:
        problems.append(f"clip range {config.clip_range}, approved {secure.clip_range}")
    if problems:
        raise SecAggError("session refused: " + "; ".join(problems))


def secagg_keys(msg: Message, context: Context) -> Message:
    """Start a session: fresh key pairs for this run; answer the public halves."""
    config = SecAggConfig.from_config(
        dict(get_config_record(msg.content, rk.SECAGG_CONFIG_KEY).items())
    )
    _check_session(config, run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS])))
    client, public_keys = SecAggClient.start(config, context.node_id)
    _save(context, client)
    return _reply(msg, ConfigRecord(encode_public_keys({context.node_id: public_keys})))


@dataclass(frozen=True)
class SecureRound:
    """This site's session, ready to mask the update of one round (checked before the
    site trains, so that no privacy budget is spent on a round it cannot send)."""

    client: SecAggClient
    round: int
    participants: tuple[int, ...]


def open_round(msg: Message, context: Context, round_number: int) -> SecureRound:
    """The session and the round's participants from a secure `train` message."""
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
    if context.node_id not in participants:
        raise SecAggError("this site is not among the round's participants")
    return SecureRound(client, round_number, tuple(sorted(participants)))


def mask_update(
    context: Context, opened: SecureRound, vector: np.ndarray, agreed: bytes
) -> tuple[np.ndarray, ConfigRecord, int]:
    """The update masked for this round (uint32), the encrypted shares to send beside it,
    and how many values were clipped. `agreed` is a digest of what every site of the
    round must have been told alike (global model, weight norm); the participants are
    bound too, so inconsistent instructions yield a random sum, not a leak."""
    binding = hashlib.sha256(agreed)
    binding.update(b"participants:" + ",".join(map(str, opened.participants)).encode())
    masked, ciphertexts, clipped = opened.client.mask(
        opened.round, list(opened.participants), vector, context=binding.digest()
    )
    _save(context, opened.client)
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
