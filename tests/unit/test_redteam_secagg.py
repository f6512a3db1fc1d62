"""Red-team findings of issue 19 about secure aggregation against a server that does not
follow the protocol, attacked in-process with the real site handlers
(`client/secure_aggregation/handlers.py`, `client/mods/approval.py`), real site folders and
keys, the real server session code (`server/secure_aggregation/secure_round.py`,
`server/secure_aggregation/session.py`) and real Flower messages. The server's own nodes
(Sybils) are driven by `SecAggClient`, as a server that registers nodes of its own would run
them.

- F6: with a roster of three training sites, a plain train message is refused although
  the server never started a session; a session, once started, is remembered on disk
  across a node restart.
- F2: a session of one real site and server-run nodes (unsigned, or signed with keys the
  roster does not list) is refused before the site masks anything; in mode "on" a site
  joins no session at all without a roster of at least two training sites.
- F1: re-running a round in a new session with one site fewer does not reveal that site:
  the others sit the round out (recorded on disk, also across a node restart).
- F12: a session naming far more sites than the roster is refused before any graph is
  built.
- F5: a site declaring more training examples than its roster cap (or, without one, than
  it joined with) is left out of the secure round by the real server; a site clips its
  own update to the range before masking; a sum outside the range is refused.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from consortia.client.mods.approval import approval_mod
from consortia.client.secure_aggregation.handlers import (
    mask_update,
    open_round,
    secagg_keys,
    secagg_unmask,
)
from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.audit.log import SITE_LEFT_OUT, read_audit_log
from consortia.common.config.security_settings import SecureAggregationSettings
from consortia.common.config.settings import Role, RosterEntry, RunSettings, load_site_settings
from consortia.common.crypto.site_keys import (
    create_site_key,
    load_site_private_key,
    public_key_fingerprint,
)
from consortia.common.secure_aggregation.config import SecAggConfig, SecAggError
from consortia.common.secure_aggregation.wire import (
    decode_ciphertexts,
    decode_public_keys,
    decode_round,
    decode_unmask_request,
    encode_ciphertexts,
    encode_public_keys,
    encode_unmask_shares,
)
from consortia.common.wire import records as rk
from consortia.common.wire.instructions import Instruction
from consortia.common.wire.run_identity import app_hash
from consortia.server.secure_aggregation.secure_round import SecureAggregator

pytestmark = pytest.mark.usefixtures("server_task_identity")

SIZE = 257  # values per update (the last one would be the weight in a real round)
AGREED = b"global model and weight norm of the round"


class Study:
    """Real sites of one approved study (keys, site configs, approvals, Flower contexts
    with node ids 1, 2, ...) and the server's side, wired through in-process messages."""

    def __init__(
        self,
        root: Path,
        names: Sequence[str],
        *,
        roster: Sequence[str] = (),
        real: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        self.root = root
        self.node_of: dict[str, int] = {name: i + 1 for i, name in enumerate(names)}
        self.prints: dict[str, str] = {}
        self.keys: dict[str, Path] = {}
        for name in names:
            files = create_site_key(root / "keys", name)
            self.keys[name] = files.private_key
            self.prints[name] = public_key_fingerprint(load_site_private_key(files.private_key))
        entries = tuple(RosterEntry(name=n, fingerprint=self.prints[n]) for n in roster)
        self.settings = RunSettings(name="study", sites=entries, **settings)
        self.contexts: dict[int, Context] = {}
        self.configs: dict[int, Path] = {}
        for name in names if real is None else real:
            self.configs[self.node_of[name]] = self._site(name)
            self.restart(self.node_of[name])
        self.fakes: dict[int, SecAggClient] = {}  # the server's own nodes
        self.forge_as: dict[int, str] = {}  # server-run node -> roster name it claims
        self.refusals: dict[int, str] = {}

    def _site(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        np.savez(folder / "data.npz", x=np.zeros(1))
        config = folder / "site.toml"
        config.write_text(
            f'[site]\nname = "{name}"\n[data]\npath = "data.npz"\n'
            f'[node]\ninsecure = true\nstate_dir = "state"\nkey = "{self.keys[name]}"\n',
            encoding="utf-8",
        )
        ApprovalStore.for_site(load_site_settings(config)).approve(self.settings, by="test")
        return config

    def restart(self, node: int) -> Context:
        """A (re)started SuperNode: Flower's in-memory context.state starts empty."""
        self.contexts[node] = Context(
            run_id=31,
            node_id=node,
            node_config={rk.NODE_CONFIG_SITE_CONFIG: str(self.configs[node])},
            state=RecordDict(),
            run_config={rk.RUN_CONFIG_SETTINGS: self.settings.to_json()},
        )
        return self.contexts[node]

    # --- the server's message exchange, answered in-process -------------------------------

    def exchange(self, messages: Sequence[Message]) -> dict[int, Message]:
        replies: dict[int, Message] = {}
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.contexts:
                replies[node] = self._site_answer(msg, self.contexts[node])
            elif node in self.fakes or msg.metadata.message_type.endswith(rk.ACTION_SECAGG_KEYS):
                replies[node] = self._fake_answer(msg, node)
        return replies

    def _site_answer(self, msg: Message, context: Context) -> Message:
        handler = secagg_keys if msg.metadata.message_type.endswith("keys") else secagg_unmask
        try:
            return handler(msg, context)
        except SecAggError as err:  # what the refusal mod answers
            self.refusals[context.node_id] = str(err)
            return Message(Error(code=rk.ERROR_SECAGG, reason=str(err)), reply_to=msg)

    def _fake_answer(self, msg: Message, node: int) -> Message:
        if msg.metadata.message_type.endswith(rk.ACTION_SECAGG_KEYS):
            config = SecAggConfig.from_config(dict(msg.content[rk.SECAGG_CONFIG_KEY].items()))
            self.fakes[node], keys = SecAggClient.start(config, node)
            if node in self.forge_as:
                values = encode_public_keys({node: keys}, self.forge(config, node, keys))
            else:
                values = encode_public_keys({node: keys})
            return Message(RecordDict({rk.SECAGG_KEY: ConfigRecord(values)}), reply_to=msg)
        request = decode_unmask_request(msg.content[rk.SECAGG_KEY], "server")
        shares = self.fakes[node].unmask(*request)
        values = encode_unmask_shares(shares)
        return Message(RecordDict({rk.SECAGG_KEY: ConfigRecord(values)}), reply_to=msg)

    def forge(self, config: SecAggConfig, node: int, keys: Mapping[str, bytes]) -> dict[int, Any]:
        """A server-run node's signature over its session keys, made with a key of the
        server's, claiming a roster site's name (new API: imported here only)."""
        from consortia.common.crypto.site_keys import create_site_key as make
        from consortia.common.secure_aggregation.roster import sign_session_keys
        from consortia.common.wire.run_identity import config_hash

        files = make(self.root / "server-keys", f"fake{node}")
        return {
            node: sign_session_keys(
                load_site_private_key(files.private_key),
                config_hash=config_hash(self.settings),
                config=config,
                node_id=node,
                site=self.forge_as[node],
                keys=keys,
            )
        }

    # --- one secure round, driven as server/run/federation.py drives it -----------------------

    def secure_round(
        self,
        aggregator: SecureAggregator,
        round_number: int,
        nodes: Sequence[int],
        vectors: Mapping[int, np.ndarray],
        weight_norm: float = 1.0,
    ) -> np.ndarray | None:
        """The unmasked sum the server gets for the round, or None when the round cannot
        be aggregated (too few sites took part)."""
        try:
            records = aggregator.prepare(round_number, nodes, weight_norm=weight_norm)
        except SecAggError:
            return None
        masked: dict[int, tuple[np.ndarray, dict[int, bytes]]] = {}
        for node, recs in records.items():
            msg = Message(
                RecordDict(dict(recs)),
                dst_node_id=node,
                message_type="train",
                group_id=str(round_number),
            )
            vector = vectors.get(node, np.zeros(SIZE, dtype=np.float32))
            if node in self.contexts:
                context = self.contexts[node]
                try:
                    opened = open_round(msg, context, round_number)
                    vec, shares, _ = mask_update(context, opened, vector, AGREED)
                except SecAggError as err:
                    self.refusals[node] = str(err)
                    continue
                masked[node] = (vec, decode_ciphertexts(shares, "site"))
            else:
                masked[node] = self._fake_mask(node, recs, round_number, vector)
        try:
            return aggregator.finish(round_number, masked)
        except SecAggError as err:
            aggregator.fail(str(err))  # as server/run/federation.py does
            return None

    def _fake_mask(
        self, node: int, recs: Mapping[str, ConfigRecord], round_number: int, vector: np.ndarray
    ) -> tuple[np.ndarray, dict[int, bytes]]:
        fake = self.fakes[node]
        fake.receive_keys(decode_public_keys(recs[rk.SECAGG_PEERS_KEY], "server"))
        _, participants = decode_round(recs[rk.SECAGG_ROUND_KEY], "server")
        binding = hashlib.sha256(AGREED)
        binding.update(b"participants:" + ",".join(map(str, sorted(participants))).encode())
        vec, shares, _ = fake.mask(round_number, participants, vector, context=binding.digest())
        return vec, decode_ciphertexts(encode_ciphertexts(shares), "fake")

    def aggregator(self) -> SecureAggregator:
        return SecureAggregator(self.settings.secure_aggregation, SIZE, self.exchange)


def _vectors(nodes: Sequence[int], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only, never masks
    return {node: rng.uniform(-1.0, 1.0, SIZE).astype(np.float32) for node in nodes}


def _close(a: np.ndarray | None, b: np.ndarray) -> bool:
    return a is not None and bool(np.max(np.abs(a - b.astype(np.float64))) < 1e-5)


def _sum(vectors: Mapping[int, np.ndarray], nodes: Sequence[int]) -> np.ndarray:
    total = np.zeros(SIZE, dtype=np.float64)
    for node in nodes:
        total += vectors[node]
    return total


def _plain_train(settings: RunSettings, **secure: Any) -> Message:
    instruction = Instruction(
        round=1,
        run_name=settings.name,
        task=settings.task,
        model=settings.model.to_model_settings(),
        layout_fingerprint="x",
        batch_size=settings.training.batch_size,
        surface_metrics=False,
        local_epochs=settings.training.local_epochs,
        learning_rate=settings.training.learning_rate,
        seed=settings.seed,
        total_rounds=settings.rounds,
        privacy=settings.privacy,
        app_hash=app_hash(),
        **secure,
    )
    content = RecordDict({rk.CONFIG_KEY: instruction.to_config()})
    return Message(content, dst_node_id=1, message_type="train", group_id="1")


def _handled(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"handled": ConfigRecord({"ok": True})}), reply_to=msg)


# -- F6 -----------------------------------------------------------------------------------


def test_f6_a_roster_of_three_training_sites_makes_secure_aggregation_mandatory(
    tmp_path: Path,
) -> None:
    """Mode "auto" (the default); the server never starts a session and asks for a
    plain update: the site refuses, whatever the server says."""
    study = Study(tmp_path, ["a", "b", "c"], roster=["a", "b", "c"], real=["a"])
    reply = approval_mod(_plain_train(study.settings), study.contexts[1], _handled)
    assert reply.has_error() and reply.error.code == rk.ERROR_NOT_APPROVED
    assert "no downgrade of secure aggregation" in str(reply.error.reason)
    # a secure train message is let through to the handler
    secure = _plain_train(study.settings, secure=True, weight_norm=10.0)
    assert not approval_mod(secure, study.contexts[1], _handled).has_error()


def test_f6_a_roster_of_two_training_sites_leaves_auto_mode_plain(tmp_path: Path) -> None:
    study = Study(tmp_path, ["a", "b"], roster=["a", "b"], real=["a"])
    assert not approval_mod(_plain_train(study.settings), study.contexts[1], _handled).has_error()


def test_f6_a_node_restart_does_not_forget_the_secure_session(tmp_path: Path) -> None:
    """No roster, mode "auto": after a session started at the site, the node restarts
    (Flower's context.state is empty again) and the server asks for a plain update."""
    study = Study(tmp_path, ["a", "b", "c"])
    aggregator = study.aggregator()
    assert aggregator.prepare(1, [1, 2, 3], weight_norm=1.0)
    reply = approval_mod(_plain_train(study.settings), study.restart(1), _handled)
    assert reply.has_error() and "no downgrade of secure aggregation" in str(reply.error.reason)


# -- F2 -----------------------------------------------------------------------------------


def test_f2_server_run_nodes_cannot_reveal_a_site(tmp_path: Path) -> None:
    """Roster a, b, c; only a is real. The server runs a session of a and two nodes of
    its own that send zeros: the 'sum' would be a's update."""
    study = Study(tmp_path, ["a", "b", "c"], roster=["a", "b", "c"], real=["a"])
    vectors = _vectors([1])
    total = study.secure_round(study.aggregator(), 1, [1, 901, 902], vectors)
    assert not _close(total, vectors[1]), "the server recovered site a's update"
    assert "not signed by a site of the study's roster" in study.refusals[1]


def test_f2_server_run_nodes_with_forged_roster_names_are_refused(tmp_path: Path) -> None:
    """The server's nodes sign with keys of their own and claim to be b and c."""
    study = Study(tmp_path, ["a", "b", "c"], roster=["a", "b", "c"], real=["a"])
    study.forge_as = {901: "b", 902: "c"}
    vectors = _vectors([1])
    total = study.secure_round(study.aggregator(), 1, [1, 901, 902], vectors)
    assert not _close(total, vectors[1]), "the server recovered site a's update"
    assert "the roster lists" in study.refusals[1] and "claims site 'b'" in study.refusals[1]


def test_f2_mode_on_a_single_fake_node_is_refused(tmp_path: Path) -> None:
    """Mode "on" accepts sessions of two: one server-run node beside a was enough."""
    study = Study(
        tmp_path,
        ["a", "b"],
        roster=["a", "b"],
        real=["a"],
        secure_aggregation=SecureAggregationSettings(mode="on"),
    )
    vectors = _vectors([1])
    total = study.secure_round(study.aggregator(), 1, [1, 901], vectors)
    assert not _close(total, vectors[1]), "the server recovered site a's update"
    assert "not signed by a site of the study's roster" in study.refusals[1]


def test_f2_mode_on_without_a_roster_joins_no_session_with_a_fake_node(tmp_path: Path) -> None:
    """No roster, mode "on": nothing the site approved names the other sites, so a
    server-run node beside a cannot be told apart; a session of a and one fake node
    revealed a's update. The site now joins no session, and sends no plain update."""
    study = Study(
        tmp_path, ["a"], real=["a"], secure_aggregation=SecureAggregationSettings(mode="on")
    )
    vectors = _vectors([1])
    total = study.secure_round(study.aggregator(), 1, [1, 901], vectors)
    assert not _close(total, vectors[1]), "the server recovered site a's update"
    assert "without a roster of at least 2" in study.refusals[1]
    plain = approval_mod(_plain_train(study.settings), study.contexts[1], _handled)
    assert plain.has_error() and "no downgrade of secure aggregation" in str(plain.error.reason)


def test_f2_mode_on_with_a_roster_of_one_trainer_joins_no_session(tmp_path: Path) -> None:
    study = Study(
        tmp_path,
        ["a", "b"],
        roster=["a"],
        real=["a"],
        min_sites=1,
        secure_aggregation=SecureAggregationSettings(mode="on"),
    )
    study.forge_as = {901: "a"}  # even signing as a roster site does not help
    total = study.secure_round(study.aggregator(), 1, [1, 901], _vectors([1]))
    assert total is None and "session refused" in study.refusals[1]
    from consortia.common.secure_aggregation.roster import roster_refusal  # new with the fix

    assert "1 training site(s) in its roster" in str(roster_refusal(study.settings))


def test_f2_auto_without_a_roster_still_aggregates_and_says_it_is_unchecked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode "auto" without a roster: the session still hides each update from a server
    that follows the protocol (one that does not could ask for plain updates instead,
    F6), so the sites take part, and each says in its log that nobody was checked."""
    study = Study(tmp_path, ["a", "b", "c"])
    vectors = _vectors([1, 2, 3])
    with caplog.at_level("WARNING", logger="consortia.client"):
        total = study.secure_round(study.aggregator(), 1, [1, 2, 3], vectors)
    assert _close(total, _sum(vectors, (1, 2, 3))) and not study.refusals
    assert sum("without a roster" in r.getMessage() for r in caplog.records) == 3


def test_f2_signed_roster_sites_aggregate_and_count_distinct_members(tmp_path: Path) -> None:
    """Four real roster sites sign their session keys in the key advertisement (no
    extra exchange) and check each other's: the round sums exactly."""
    study = Study(tmp_path, ["a", "b", "c", "d"], roster=["a", "b", "c", "d"], min_sites=4)
    aggregator = study.aggregator()
    vectors = _vectors([1, 2, 3, 4])
    total = study.secure_round(aggregator, 1, [1, 2, 3, 4], vectors)
    assert _close(total, _sum(vectors, (1, 2, 3, 4)))
    assert aggregator.sessions_started == 1 and not study.refusals
    # min_sites = 4: a round of three distinct roster sites is refused by each of them
    assert study.secure_round(aggregator, 2, [1, 2, 3], vectors) is None
    assert "3 distinct sites of the study's roster, 4 needed" in study.refusals[1]


# -- F1 -----------------------------------------------------------------------------------


def test_f1_a_round_replayed_without_one_site_does_not_reveal_it(tmp_path: Path) -> None:
    """Round 1 with {A, B, C, D}, then a new session with {B, C, D} for round 1 again:
    B, C and D would resend the same update (a DP site's kept release, a non-DP site's
    deterministic retraining), and the difference of the sums would be A's update."""
    study = Study(tmp_path, ["a", "b", "c", "d"])
    vectors = _vectors([1, 2, 3, 4])
    aggregator = study.aggregator()
    first = study.secure_round(aggregator, 1, [1, 2, 3, 4], vectors)
    assert first is not None
    aggregator.fail("the server starts over")  # a new session
    second = study.secure_round(aggregator, 1, [2, 3, 4], vectors)
    recovered = None if second is None else first - second
    assert not _close(recovered, vectors[1]), "the server recovered site A's update"
    assert second is None
    assert "sits the round out" in study.refusals[2]
    # the study goes on: the next round aggregates in the new session
    assert _close(
        study.secure_round(aggregator, 2, [2, 3, 4], vectors),
        _sum(vectors, (2, 3, 4)),
    )


def test_f1_the_record_survives_a_node_restart(tmp_path: Path) -> None:
    study = Study(tmp_path, ["a", "b", "c", "d"])
    vectors = _vectors([1, 2, 3, 4])
    aggregator = study.aggregator()
    first = study.secure_round(aggregator, 1, [1, 2, 3, 4], vectors)
    assert first is not None
    for node in (2, 3, 4):
        study.restart(node)  # context.state lost: the session's keys are gone too
    aggregator.fail("nodes restarted")
    assert study.secure_round(aggregator, 1, [2, 3, 4], vectors) is None
    assert all("sits the round out" in study.refusals[node] for node in (2, 3, 4))


# -- F12 ----------------------------------------------------------------------------------


def test_f12_a_huge_participant_list_is_refused_before_any_graph(tmp_path: Path) -> None:
    study = Study(
        tmp_path,
        ["a", "b", "c"],
        roster=["a", "b", "c"],
        real=["a"],
        secure_aggregation=SecureAggregationSettings(mode="on"),
    )
    sa = study.settings.secure_aggregation

    def keys_message(n: int) -> Message:
        """A session config of n sites with the parameters the approved run implies."""
        threshold, neighbours = sa.parameters_for(3)
        values = SecAggConfig(
            session=5,
            participants=(1, 2, 3),
            threshold=threshold,
            neighbours=neighbours,
            clip_range=sa.clip_range,
            vector_size=SIZE,
        ).to_config()
        threshold, neighbours = sa.parameters_for(n)
        values["secagg.participants"] = list(range(1, n + 1))
        values["secagg.threshold"], values["secagg.neighbours"] = threshold, neighbours
        content = RecordDict({rk.SECAGG_CONFIG_KEY: ConfigRecord(values)})
        return Message(content, dst_node_id=1, message_type="train.secagg_keys", group_id="1")

    started = time.perf_counter()
    with pytest.raises(SecAggError, match="2000 sites, the approved run has at most 3"):
        secagg_keys(keys_message(2000), study.contexts[1])
    assert time.perf_counter() - started < 1.0
    with pytest.raises(SecAggError, match="4 sites, the approved run has at most 3"):
        secagg_keys(keys_message(4), study.contexts[1])
    assert Role.TRAIN in {entry.role for entry in study.settings.sites}


def test_f12_no_session_may_name_more_than_the_protocol_maximum() -> None:
    from consortia.common.secure_aggregation.config import MAX_PARTICIPANTS  # new with the fix

    started = time.perf_counter()
    with pytest.raises(SecAggError, match="'participants' names 50000 nodes, at most"):
        SecAggConfig(
            session=1,
            participants=tuple(range(50_000)),
            threshold=33_334,
            neighbours=49_999,
            clip_range=1.0,
            vector_size=4,
        )
    assert time.perf_counter() - started < 1.0 and MAX_PARTICIPANTS < 50_000


# -- F5 -----------------------------------------------------------------------------------


def test_f5_values_beyond_the_clip_range_are_caught_in_the_sum() -> None:
    """A malicious site adds 2^31 to its masked vector after masking (values that wrap
    modulo 2^32, beyond what clipping allows). With one of four sites dropped, the
    unmasked sum of the three must lie in [-3c, 3c]; it leaves it, and the server
    refuses the round instead of using it. (With every site active the range
    [-n c, n c] covers all of 2^32: such a shift wraps into a valid-looking sum.)"""
    from consortia.server.secure_aggregation.session import SecAggServer

    config = SecAggConfig(
        session=3,
        participants=(1, 2, 3, 4),
        threshold=3,
        neighbours=3,
        clip_range=1.0,
        vector_size=SIZE,
    )
    clients, keys = {}, {}
    for node in config.participants:
        clients[node], keys[node] = SecAggClient.start(config, node)
    server = SecAggServer(config)
    forwarded = server.receive_public_keys(keys)
    for node, client in clients.items():
        client.receive_keys(forwarded[node])
    server.begin_round(1, [1, 2, 3, 4])
    vectors = _vectors([1, 2, 3])
    masked = {}
    for node in (1, 2, 3):  # node 4 drops out
        vec, shares, _ = clients[node].mask(1, [1, 2, 3, 4], vectors[node])
        masked[node] = (vec, shares)
    masked[1][0][:] += np.uint32(2**31)
    server.receive_masked(masked)
    answers = {
        node: clients[node].unmask(1, [1, 2, 3], [4], server.unmask_request(node)[2])
        for node in (1, 2, 3)
    }
    with pytest.raises(SecAggError, match=r"leaves \[-3 c, 3 c\] .* at \d+ coordinates"):
        server.unmask(answers)


# -- F5: example counts and the update's range, bounded out of band ----------------------


def _secure_federation(study: Study, tmp_path: Path, declared: Mapping[str, int]) -> Any:
    """The real server (`server/run/federation.py`) of the study with its sites as they
    answered `query` (`declared`: each one's training examples), secure aggregation on
    and the session exchange answered by the study's real sites."""
    from typing import cast

    from flwr.serverapp import Grid

    from consortia.server.exchange.sites import Site
    from consortia.server.run.federation import Federation
    from consortia.server.run.folder import RunFolder
    from consortia.server.run.round_aggregation import RoundAggregation
    from consortia.server.secure_aggregation.secure_round import SecureAggregation

    folder = RunFolder(tmp_path / "runs" / "study", {"run_name": "study"})
    federation = Federation(cast(Grid, None), study.settings, folder)
    secure = SecureAggregation(
        federation.strategy, study.aggregator(), federation.roster.example_cap_refusal
    )
    federation.aggregation = secure
    federation.closing = RoundAggregation(
        folder,
        federation.layout,
        federation.roster,
        federation.channel,
        federation.collector,
        secure,
    )
    for name, count in declared.items():
        node = study.node_of[name]
        federation.roster.register(Site(node, name, Role.TRAIN, count, 0, f"{node:064x}"))
    return federation


def _capped_study(tmp_path: Path, caps: Mapping[str, int | None]) -> Study:
    study = Study(tmp_path, list(caps), roster=list(caps), min_sites=3)
    entries = tuple(
        RosterEntry(name=n, fingerprint=study.prints[n], max_examples=cap)
        for n, cap in caps.items()
    )
    study.settings = study.settings.model_copy(update={"sites": entries})
    for node, config in study.configs.items():  # the sites approve the capped roster
        ApprovalStore.for_site(load_site_settings(config)).approve(study.settings, by="test")
        study.restart(node)
    return study


def test_f5_a_declared_example_count_beyond_the_roster_cap_is_left_out(tmp_path: Path) -> None:
    """Site d declares 10^12 training examples: the weight norm of the round (the largest
    declared count) would scale a, b and c's updates down to the quantisation step. The
    roster caps d at 100 examples: the server leaves d out of the secure round, audited
    with the reason, and the weight norm is the honest sites' largest count."""
    study = _capped_study(tmp_path, {"a": 100, "b": 100, "c": 100, "d": 100})
    declared = {"a": 40, "b": 60, "c": 80, "d": 10**12}
    federation = _secure_federation(study, tmp_path, declared)
    trainers = federation.roster.select_training_sites(1)
    records = federation.closing.open(1, trainers).records
    assert sorted(records) == [1, 2, 3], "the site over its roster cap took part"
    assert federation.aggregation.aggregator.weight_norm == 80.0
    events = read_audit_log(federation.folder.audit.path)
    [left] = [e for e in events if e["event"] == SITE_LEFT_OUT and e.get("site") == "d"]
    assert left["round"] == 1 and "max_examples" in left["reason"] and "100" in left["reason"]
    # the honest sites' weighted updates still aggregate to FedAvg's mean
    vectors = _vectors([1, 2, 3])
    for node, count in zip((1, 2, 3), (40, 60, 80), strict=True):
        vectors[node][-1] = count / federation.aggregation.aggregator.weight_norm
    total = study.secure_round(
        federation.aggregation.aggregator, 2, [1, 2, 3], vectors, weight_norm=80.0
    )
    assert _close(total, _sum(vectors, (1, 2, 3)))


def test_f5_without_a_roster_cap_a_site_may_not_grow_its_count_on_rejoining(
    tmp_path: Path,
) -> None:
    """No cap in the roster: the count a site declared when it joined bounds it. Site d
    comes back (a new node) declaring 10^12 examples of the same data: it is left out."""
    from consortia.server.exchange.discovery import SiteAnswer
    from consortia.server.exchange.sites import Site
    from consortia.server.run.privacy import SitePrivacy

    study = _capped_study(tmp_path, {"a": None, "b": None, "c": None, "d": None})
    federation = _secure_federation(study, tmp_path, {"a": 40, "b": 60, "c": 80, "d": 50})
    privacy = SitePrivacy(f"{4:064x}", 10.0, 1e-5, 0.0)
    grown = Site(44, "d", Role.TRAIN, 10**12, 0, f"{4:064x}")
    federation.roster.admit([SiteAnswer(44, grown, privacy)], round_number=2)
    assert 44 not in federation.roster.sites and 4 in federation.roster.sites
    assert "more training examples" in federation.roster.refusals[44]
    records = federation.closing.open(2, federation.roster.select_training_sites(2)).records
    assert sorted(records) == [1, 2, 3, 4] and federation.aggregation.aggregator.weight_norm == 80.0


def test_f5_a_site_clips_its_own_update_to_the_range_before_masking(tmp_path: Path) -> None:
    """A site's update far beyond the clip range c (here 10^6 per value): the site clips
    it to [-c, c] before masking, so its share of the unmasked sum is at most c per
    coordinate (a site that skips the clipping is caught by the range check above)."""
    study = Study(tmp_path, ["a", "b", "c"])
    clip = study.settings.secure_aggregation.clip_range
    vectors = _vectors([1, 2, 3])
    vectors[3] = np.full(SIZE, 1e6, dtype=np.float32)
    total = study.secure_round(study.aggregator(), 1, [1, 2, 3], vectors)
    expected = _sum(vectors, (1, 2)) + clip
    assert total is not None and _close(total, expected)
