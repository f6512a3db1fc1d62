"""An in-process Flower `Grid` for unit tests of the round loop (`server/run/federation.py`).

`FakeGrid` implements what the loop uses of Flower's Grid (`get_node_ids`, `push_messages`,
`pull_messages`): pushed messages get a message id, as Flower's in-memory grid gives them,
and each connected node answers at once with a real `flwr.app.Message` reply made by its
`FakeSite`. A site answers `query` as Consortia's ClientApp does, trains by adding a fixed
step to the model it got, and runs SecAgg+ with the real site-side session code
(`client/secure_aggregation/session.py`). Every reply is signed with the site's real key
(`common/crypto/site_keys.py`, `common/crypto/signing.py`), registered in a real site
registry, so the server's `ReplyVerifier` checks it like any other.

A test changes a site's behaviour through `FakeSite.answer`: a function of the request
that returns a reply, `DROP` (no reply: the site is gone), or `DEFAULT` (the usual reply).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from consortia.client.secure_aggregation.session import SecAggClient
from consortia.common.config.settings import Role
from consortia.common.crypto.signing import SignedFields, sign
from consortia.common.crypto.site_keys import create_site_key, load_site_private_key
from consortia.common.secure_aggregation.config import SecAggConfig
from consortia.common.secure_aggregation.wire import (
    decode_public_keys,
    decode_round,
    decode_unmask_request,
    encode_ciphertexts,
    encode_public_keys,
    encode_unmask_shares,
)
from consortia.common.wire import records as rk
from consortia.common.wire.record_digest import record_digest
from consortia.common.wire.record_fields import message_round
from consortia.server.registry.site_registry import SiteRegistry

__all__ = ["DEFAULT", "DROP", "FakeGrid", "FakeSite", "error_reply", "make_sites"]

# What `FakeSite.answer` returns to leave a request unanswered, or to answer as usual.
DROP = "drop"
DEFAULT = "default"
# How far every site moves each value of the model it trains (times its node id).
STEP = 0.01
RUN_ID = 31
_BINDING = b"what every site of the round was told alike"

Answer = Callable[[Message], "Message | str"]


def error_reply(request: Message, code: int, reason: str) -> Message:
    """The error reply a site's ClientApp sends when it refuses a request."""
    return Message(Error(code=code, reason=reason), reply_to=request)


def _weights_of(request: Message) -> np.ndarray:
    return request.content.array_records[rk.ARRAYS_KEY][rk.WEIGHTS_ARRAY].numpy()


@dataclass
class FakeSite:
    """One site behind one node: its name, role, data size and signing key."""

    name: str
    node_id: int
    key: ec.EllipticCurvePrivateKey
    role: Role = Role.TRAIN
    num_train: int = 20
    num_eval: int = 5
    connected: bool = True
    answer: Answer = field(default=lambda request: DEFAULT)
    secagg: SecAggClient | None = None
    requests: list[Message] = field(default_factory=list)

    def reply(self, request: Message) -> Message | None:
        """The site's signed reply to `request`, or None when it does not answer."""
        self.requests.append(request)
        custom = self.answer(request)
        if custom == DROP:
            return None
        reply = self.default_reply(request) if custom == DEFAULT else custom
        assert isinstance(reply, Message)
        if not reply.has_error() and rk.SIGNATURE_KEY not in reply.content:
            self._sign(request, reply)  # a reply the test signed itself stays as it is
        return reply

    def default_reply(self, request: Message) -> Message:
        """What an honest site answers."""
        kind = request.metadata.message_type
        if kind == MessageType.QUERY:
            return Message(RecordDict({rk.INFO_KEY: self._info()}), reply_to=request)
        if kind == f"{MessageType.TRAIN}.{rk.ACTION_SECAGG_KEYS}":
            return self._secagg_keys(request)
        if kind == f"{MessageType.TRAIN}.{rk.ACTION_SECAGG_UNMASK}":
            return self._secagg_unmask(request)
        if kind == MessageType.TRAIN:
            return self._train(request)
        return Message(RecordDict(), reply_to=request)  # an evaluation without metrics

    def _info(self) -> ConfigRecord:
        return ConfigRecord(
            {
                rk.SITE_NAME: self.name,
                rk.SITE_ROLE: self.role.value,
                rk.SITE_NUM_TRAIN: self.num_train,
                rk.SITE_NUM_EVAL: self.num_eval,
                rk.SITE_DATA_FINGERPRINT: hashlib.sha256(self.name.encode()).hexdigest(),
                rk.SITE_MAX_EPSILON: 10.0,
                rk.SITE_DELTA: 1e-5,
                rk.SITE_EPSILON_SPENT: 0.0,
            }
        )

    def trained(self, weights: np.ndarray) -> np.ndarray:
        """The model this site sends back after training `weights`."""
        return (weights + np.float32(STEP * self.node_id)).astype(weights.dtype)

    def _train(self, request: Message) -> Message:
        weights = _weights_of(request)
        new = self.trained(weights)
        content = RecordDict(
            {
                rk.TRAIN_METRICS_KEY: MetricRecord(
                    {rk.M_NUM_EXAMPLES: self.num_train, rk.M_COMPUTE_S: 0.1, rk.M_TRAIN_LOSS: 0.5}
                )
            }
        )
        if rk.SECAGG_ROUND_KEY in request.content.config_records:
            new, shares = self._mask(request, weights, new)
            content[rk.SECAGG_KEY] = ConfigRecord(encode_ciphertexts(shares))
        content[rk.ARRAYS_KEY] = ArrayRecord({rk.WEIGHTS_ARRAY: Array(new)})
        return Message(content, reply_to=request)

    def _mask(
        self, request: Message, weights: np.ndarray, new: np.ndarray
    ) -> tuple[np.ndarray, dict[int, bytes]]:
        """The weighted delta and its weight, masked as a real site masks them."""
        assert self.secagg is not None, f"{self.name}: no secure-aggregation session"
        records = request.content.config_records
        self.secagg.receive_keys(decode_public_keys(records[rk.SECAGG_PEERS_KEY], "server"))
        round_number, participants = decode_round(records[rk.SECAGG_ROUND_KEY], "server")
        norm = float(records[rk.CONFIG_KEY][rk.CFG_WEIGHT_NORM])  # type: ignore[arg-type]
        weight = self.num_train / norm
        vector = np.empty(weights.size + 1, dtype=np.float32)
        vector[:-1] = (new.astype(np.float64) - weights) * weight
        vector[-1] = weight
        masked, shares, _ = self.secagg.mask(round_number, participants, vector, context=_BINDING)
        return masked, shares

    def _secagg_keys(self, request: Message) -> Message:
        config = SecAggConfig.from_config(dict(request.content[rk.SECAGG_CONFIG_KEY].items()))
        self.secagg, keys = SecAggClient.start(config, self.node_id)
        values = encode_public_keys({self.node_id: keys})
        return Message(RecordDict({rk.SECAGG_KEY: ConfigRecord(values)}), reply_to=request)

    def _secagg_unmask(self, request: Message) -> Message:
        assert self.secagg is not None, f"{self.name}: no secure-aggregation session"
        unmask = decode_unmask_request(request.content[rk.SECAGG_KEY], "server")
        values = encode_unmask_shares(self.secagg.unmask(*unmask))
        return Message(RecordDict({rk.SECAGG_KEY: ConfigRecord(values)}), reply_to=request)

    def _sign(self, request: Message, reply: Message) -> None:
        """Sign as the site's signing mod does (over the content, run, round, node, nonce)."""
        config = request.content.config_records.get(rk.CONFIG_KEY)
        nonce = config.get(rk.CFG_NONCE) if config is not None else None
        if not isinstance(nonce, str):
            return
        fields = SignedFields(
            kind=request.metadata.message_type.partition(".")[0],
            run_id=str(RUN_ID),
            round=message_round(request),
            node_id=self.node_id,
            nonce=nonce,
            site=self.name,
            digest=record_digest(reply.content),
        )
        reply.content[rk.SIGNATURE_KEY] = ConfigRecord(
            {
                rk.SIG_SITE: fields.site,
                rk.SIG_KIND: fields.kind,
                rk.SIG_ROUND: fields.round,
                rk.SIG_NONCE: fields.nonce,
                rk.SIG_DIGEST: fields.digest,
                rk.SIG_SIGNATURE: sign(self.key, fields),
            }
        )


def make_sites(
    root: Path,
    names: Iterable[str],
    registry: SiteRegistry,
    *,
    roles: dict[str, Role] | None = None,
) -> dict[int, FakeSite]:
    """Sites with real keys (node ids 1, 2, ...), each registered under its node id."""
    sites: dict[int, FakeSite] = {}
    for node_id, name in enumerate(names, start=1):
        files = create_site_key(root / "keys", name)
        registry.register(name, files.public_key)
        registry.record_flower_node(name, node_id)
        role = (roles or {}).get(name, Role.TRAIN)
        key = load_site_private_key(files.private_key)
        sites[node_id] = FakeSite(name, node_id, key, role)
    return sites


class FakeGrid(Grid):
    """The Grid the round loop talks to, answered in-process by `FakeSite`s."""

    def __init__(self, sites: dict[int, FakeSite]) -> None:
        self.sites = sites
        self._replies: dict[str, Message] = {}
        self.pushed: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return [node for node, site in self.sites.items() if site.connected]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            self.pushed.append(message)
            ids.append(message.metadata.message_id)
            site = self.sites.get(message.metadata.dst_node_id)
            if site is None or not site.connected:
                continue
            reply = site.reply(message)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def set_run(self, run: Run) -> None:
        raise NotImplementedError("the fake grid has no run")

    @property
    def run(self) -> Run:
        raise NotImplementedError("the fake grid has no run")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))
