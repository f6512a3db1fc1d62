"""The site's side of secure aggregation (SecAgg+ sessions) in the ClientApp.

A session starts with `train.secagg_keys` (fresh key pairs for this run); each round the
ordinary `train` message brings the neighbours' public keys and the round's participants
(`mask_update`), and `train.secagg_unmask` asks for the shares that remove the masks from
the sum. Each message may be handled by a different process: the session's secrets live
in Flower's per-run `context.state`, which never leaves this node.

Against a server that does not follow the protocol (issue 19):

- F2: the site signs its session keys with its registered key, in the key
  advertisement itself (`secagg_keys`); with a roster, it masks only with neighbours
  whose signatures match the roster, and only when its round's group holds enough
  distinct roster sites (`open_round`).
- F1: a round's update is masked for one session and one set of participants only,
  recorded on disk before it leaves (`SecureRecord`); asked again in another session
  or with other sites, the site sits the round out, before training.
- F6: `plain_update_refusal` (used by the approval mod) refuses a plain update when the
  approved roster makes secure aggregation mandatory, or once the run had a secure
  session, also after a node restart (the record is on disk).
- F12: a session naming more sites than the roster's training sites is refused before
  anything is built from its list.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from consortia.client.secure_aggregation.session import SecAggClient
from consortia.client.secure_aggregation.state import SecureRecord
from consortia.client.site_context import site_settings
from consortia.common.config.settings import RunSettings, run_settings_from_json
from consortia.common.crypto.site_keys import load_site_private_key
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.roster import (
    KeyAdvert,
    max_session_sites,
    roster_refusal,
    secure_required,
    session_minimum,
    sign_session_keys,
    verify_session_keys,
)
from consortia.common.secure_aggregation.wire import (
    decode_adverts,
    decode_public_keys,
    decode_round,
    decode_unmask_request,
    encode_ciphertexts,
    encode_public_keys,
    encode_unmask_shares,
)
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import get_config_record
from consortia.common.wire.run_identity import config_hash

__all__ = [
    "SecureRound",
    "mask_update",
    "open_round",
    "plain_update_refusal",
    "secagg_keys",
    "secagg_unmask",
]

_FROM_SERVER = "the server"

logger = logging.getLogger("consortia.client")


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


def _run_settings(context: Context) -> RunSettings:
    return run_settings_from_json(str(context.run_config[rk.RUN_CONFIG_SETTINGS]))


def _check_session(config: SecAggConfig, settings: RunSettings) -> None:
    """Refuse a session whose parameters are not those the approved run implies: the
    server must not lower the threshold, change the clipping range or the neighbours, or
    run a session too small for the sum to hide anyone (or, with a roster, larger than
    the roster's training sites)."""
    refusal = roster_refusal(settings)
    if refusal is not None:  # F2: Sybils cannot be told apart without a roster
        raise SecAggError(f"session refused: {refusal}")
    secure = settings.secure_aggregation
    n = len(config.participants)
    minimum, most = session_minimum(settings), max_session_sites(settings)
    if n > most:  # checked before the graph: no O(n^2) work for a huge list (F12)
        raise SecAggError(f"session refused: {n} sites, the approved run has at most {most}")
    threshold, neighbours = secure.parameters_for(n)
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


def _session_config(msg: Message, settings: RunSettings) -> SecAggConfig:
    values = dict(get_config_record(msg.content, rk.SECAGG_CONFIG_KEY).items())
    listed = values.get("secagg.participants")
    most = max_session_sites(settings)
    if isinstance(listed, list) and len(listed) > most:
        raise SecAggError(
            f"session refused: {len(listed)} sites, the approved run has at most {most}"
        )
    return SecAggConfig.from_config(values)


def secagg_keys(msg: Message, context: Context) -> Message:
    """Start a session: fresh key pairs for this run; answer the public halves, signed
    with the site's registered key (in the same reply: no extra exchange)."""
    settings = _run_settings(context)
    config = _session_config(msg, settings)
    _check_session(config, settings)
    site = site_settings(context)
    approved = config_hash(settings)
    if not settings.sites:
        logger.warning(
            "secure-aggregation session %d without a roster: the other participants "
            "cannot be checked (a server running nodes of its own could read this "
            "site's update; docs/secure-aggregation.md)",
            config.session,
        )
    client, public_keys = SecAggClient.start(config, context.node_id)
    SecureRecord(site.state_path, approved).note_session(config.session)
    _save(context, client)
    adverts: dict[int, KeyAdvert] = {}
    if site.node.key is not None:
        adverts[context.node_id] = sign_session_keys(
            load_site_private_key(site.node.key),
            config_hash=approved,
            config=config,
            node_id=context.node_id,
            site=site.site.name,
            keys=public_keys,
        )
    keys = encode_public_keys({context.node_id: public_keys}, adverts)
    return _reply(msg, ConfigRecord(keys))


def plain_update_refusal(
    settings: RunSettings, state_dir: Path, approved_hash: str, session_in_memory: bool
) -> str | None:
    """Why this site refuses to send a plain (unmasked) update, or None: the approved
    run makes secure aggregation mandatory (mode "on", or a roster with enough training
    sites), or the run already had a secure session here (in Flower's context, or on
    disk, which a node restart does not forget)."""
    if secure_required(settings):
        why = "the approved run aggregates securely"
    elif session_in_memory or SecureRecord(state_dir, approved_hash).had_session():
        why = "this run had a secure-aggregation session at this site"
    else:
        return None
    return f"{why}; this site does not send a plain update (no downgrade of secure aggregation)"


@dataclass(frozen=True)
class SecureRound:
    """This site's session, ready to mask the update of one round (checked before the
    site trains, so that no privacy budget is spent on a round it cannot send)."""

    client: SecAggClient
    round: int
    participants: tuple[int, ...]
    record: SecureRecord


def _check_roster(
    settings: RunSettings,
    approved: str,
    client: SecAggClient,
    own_name: str,
    peers: Mapping[int, Mapping[str, bytes]],
    adverts: Mapping[int, KeyAdvert],
    participants: Sequence[int],
) -> None:
    """With a roster: every neighbour's session keys must be signed by a distinct
    training site of the roster, and the round's group (this site and its neighbours
    taking part) must hold `session_minimum` distinct roster sites (at most its whole
    group). Raises `SecAggError` naming the node and the problem (F2)."""
    config, me = client.config, client.node_id
    names: dict[int, str] = {}
    for node, keys in peers.items():
        if node == me:
            continue
        name = verify_session_keys(
            adverts.get(node),
            settings,
            config_hash=approved,
            config=config,
            node_id=node,
            keys=keys,
        )
        if name == own_name or name in names.values():
            raise SecAggError(f"node {node} signs as site {name!r}, which another node also is")
        names[node] = name
    present = set(participants)
    group = list(config.neighbours_in(me, present))
    unsigned = [node for node in group if node not in names]
    if unsigned:
        raise SecAggError(f"no signed session keys of neighbour {unsigned[0]} in this round")
    distinct = 1 + len({names[node] for node in group})
    needed = min(session_minimum(settings), len(config.group_of(me)))
    if distinct < needed:
        raise SecAggError(
            f"this round's group holds {distinct} distinct sites of the study's roster, "
            f"{needed} needed"
        )


def open_round(
    msg: Message, context: Context, round_number: int, settings: RunSettings | None = None
) -> SecureRound:
    """The session and the round's participants from a secure `train` message, checked
    before the site trains: neighbours' signatures against the roster (F2), and that
    this round's update has not gone into another sum (F1). `settings`: the approved run
    settings when the caller has parsed them already (else read from `context`)."""
    client = _load(context)
    if settings is None:
        settings = _run_settings(context)
    site = site_settings(context)
    approved = config_hash(settings)
    keys_record = get_config_record(msg.content, rk.SECAGG_PEERS_KEY)
    peers = decode_public_keys(keys_record, _FROM_SERVER)
    adverts = decode_adverts(keys_record, _FROM_SERVER)
    secure_round, participants = decode_round(
        get_config_record(msg.content, rk.SECAGG_ROUND_KEY), _FROM_SERVER
    )
    if secure_round != round_number:
        raise SecAggError(
            f"the secure-aggregation round {secure_round} is not the training round {round_number}"
        )
    if context.node_id not in participants:
        raise SecAggError("this site is not among the round's participants")
    client.config.round_participants(participants, f"round {round_number}")
    if settings.sites:
        _check_roster(settings, approved, client, site.site.name, peers, adverts, participants)
    client.receive_keys(peers)
    record = SecureRecord(site.state_path, approved)
    refusal = record.round_refusal(round_number, client.config.session, participants)
    if refusal is not None:
        raise SecAggError(refusal)
    return SecureRound(client, round_number, tuple(sorted(participants)), record)


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
    # On disk before the masked update leaves: this round goes into no other sum (F1).
    opened.record.note_round(opened.round, opened.client.config.session, opened.participants)
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
