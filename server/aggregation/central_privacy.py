"""Optional client-level (central) differential privacy at the server, done by Flower.

Each round the server releases a new global model. With `[run.central_privacy]` enabled
that release goes through Flower's own `DifferentialPrivacyServerSideFixedClipping`
wrapped around Flower's `FedAvg`, with Flower's `RdpAccountant` attached:

1. `configure_train` is called with the current global model (our flat vector as the one
   `Array` "weights" of an `ArrayRecord`). The wrapper remembers the model to clip
   against and records the round's pending privacy event; Flower checks there that as
   many sites were asked as the wrapper's `num_sampled_clients`. The `Grid` it needs
   only lists the node ids FedAvg samples from: a stand-in grid lists one placeholder id
   per site the server asked to train (the messages FedAvg builds are never sent: our
   own round loop did the sending), and FedAvg takes all of them.
2. Every update becomes a reply `Message` (`Message(content, reply_to=instruction)`, the
   public constructor a ClientApp's reply goes through) in the record layout FedAvg reads:
   one `ArrayRecord` under `FedAvg.arrayrecord_key` and one `MetricRecord` whose
   `FedAvg.weighted_by_key` is 1 for every site: uniform weights, since weighting by
   example counts would leak them and Flower's accounting refuses unequal weights.
3. `aggregate_train` clips each update (reply - global) to `clipping_norm`, averages,
   adds Gaussian noise of `noise_multiplier * clipping_norm / m` to every coordinate
   (m = sites asked) and composes the release in the accountant. When fewer replies
   than sites asked arrive Flower releases nothing: `aggregate` returns None and
   nothing is charged.

Flower's wrapper has a fixed `num_sampled_clients`; when fewer training sites are left
than `sites_per_round`, a second wrapper for that smaller m shares the same accountant
(each release is still one Gaussian mechanism of noise multiplier sigma).

Flower builds messages with the identity of the running ServerApp process
(`flwr.supercore.task_identity.TaskIdentity`, set by Flower's runtime), so this module
must run inside a ServerApp, as `Federation` does; tests set that identity themselves.

Noise: Flower draws it with `np.random.normal`, NumPy's global legacy `RandomState`
(MT19937), which is not a cryptographic generator and which any code in the process may
seed (MONAI's `set_determinism`, a run's `seed`). Flower offers no way to pass a
generator, so around each release this module reseeds that global generator with
19,968 bits from `secrets` (the OS's CSPRNG) and restores the previous state afterwards:
the noise cannot be reproduced from any seed the run uses, and the rest of the process
keeps its reproducible random stream. MT19937's output stays predictable from enough
of its own output, and floating-point Gaussian sampling is not an exact Gaussian
mechanism; docs/central-privacy.md lists these limits.

Accounting: `SamplingMethod.NO_AMPLIFICATION` with the add-or-remove-one-site relation
(the only combination Flower's fixed-clipping accounting accepts): the server picks the
sites with a seeded, public rule, so no amplification by sampling is claimed.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.run import Run

from consortia.common.config.privacy_settings import CentralPrivacySettings
from consortia.common.wire import records as rk

__all__ = ["ACCOUNTANT_NAME", "CentralPrivacy"]

logger = logging.getLogger("consortia.server")

ACCOUNTANT_NAME = "flwr.serverapp.RdpAccountant (no-amplification, add-or-remove-one site)"
_MT19937_STATE_BYTES = 624 * 4
_STATE_VERSION = 1


class _SelectedSitesGrid(Grid):
    """The part of a Grid FedAvg's `configure_train` uses: the ids it samples from."""

    def __init__(self, node_ids: Sequence[int]) -> None:
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def set_run(self, run: Run) -> None:
        raise NotImplementedError("a stand-in grid has no run")

    @property
    def run(self) -> Run:
        raise NotImplementedError("a stand-in grid has no run")

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError("a stand-in grid sends nothing")

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("a stand-in grid sends nothing")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("a stand-in grid receives nothing")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise NotImplementedError("a stand-in grid sends nothing")


@contextmanager
def _os_seeded_numpy_global_rng() -> Iterator[None]:
    """Reseed NumPy's global generator from the OS CSPRNG; restore its state on exit."""
    saved = np.random.get_state()
    np.random.seed(np.frombuffer(secrets.token_bytes(_MT19937_STATE_BYTES), dtype=np.uint32))
    try:
        yield
    finally:
        np.random.set_state(saved)


@contextmanager
def _python_random_untouched() -> Iterator[None]:
    """FedAvg samples node ids with the global `random`; keep its stream unchanged."""
    saved = random.getstate()
    try:
        yield
    finally:
        random.setstate(saved)


class CentralPrivacy:
    """Client-level DP at the server through Flower's
    DifferentialPrivacyServerSideFixedClipping(FedAvg) and Flower's accountant.

    `sites_per_round` is the number of sites the server asks to train each round (the
    `m` of the noise `sigma * C / m`); `layout_size` the length of the flat weight vector.
    With `noise_multiplier` 0 updates are clipped and averaged but nothing is accounted:
    there is no privacy guarantee and `spent()` reports epsilon None.
    """

    def __init__(
        self, settings: CentralPrivacySettings, *, sites_per_round: int, layout_size: int
    ) -> None:
        if sites_per_round <= 0:
            raise ValueError(f"sites_per_round must be positive, got {sites_per_round}")
        if layout_size <= 0:
            raise ValueError(f"layout_size must be positive, got {layout_size}")
        self.settings = settings
        self.sites_per_round = sites_per_round
        self.layout_size = layout_size
        self.accountant: RdpAccountant | None = None
        if settings.noise_multiplier > 0:
            self.accountant = RdpAccountant(
                PrivacyConfig(
                    target_delta=settings.delta,
                    # Only reported: no amplification means the population plays no part.
                    population_size=sites_per_round,
                    neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                    sampling_method=SamplingMethod.NO_AMPLIFICATION,
                )
            )
        else:
            logger.warning(
                "central privacy with noise_multiplier 0: updates are clipped, not private"
            )
        self._wrappers: dict[int, tuple[DifferentialPrivacyServerSideFixedClipping, FedAvg]] = {}
        self._unaccounted_releases = 0
        self.last_refusal: str | None = None

    def noise_std(self, asked: int | None = None) -> float:
        """Standard deviation of the noise added to every coordinate of the mean."""
        sites = self.sites_per_round if asked is None else asked
        return self.settings.noise_multiplier * self.settings.clipping_norm / sites

    def _wrapper(self, asked: int) -> tuple[DifferentialPrivacyServerSideFixedClipping, FedAvg]:
        """Flower's wrapper for rounds that ask `asked` sites; all share one accountant."""
        if asked not in self._wrappers:
            # Every listed site trains; configure_evaluate is never called.
            fedavg = FedAvg(fraction_train=1.0, min_train_nodes=asked, min_available_nodes=asked)
            wrapper = DifferentialPrivacyServerSideFixedClipping(
                fedavg,
                noise_multiplier=self.settings.noise_multiplier,
                clipping_norm=self.settings.clipping_norm,
                num_sampled_clients=asked,
                accountant=self.accountant,
            )
            self._wrappers[asked] = (wrapper, fedavg)
        return self._wrappers[asked]

    def _check_vector(self, what: str, vector: np.ndarray) -> None:
        if vector.ndim != 1 or vector.size != self.layout_size:
            raise ValueError(f"{what} has shape {vector.shape}, expected ({self.layout_size},)")

    @staticmethod
    def _reply_content(fedavg: FedAvg, update: np.ndarray) -> RecordDict:
        """A train reply as FedAvg reads it: one ArrayRecord, one MetricRecord, weight 1."""
        arrays = ArrayRecord({rk.WEIGHTS_ARRAY: Array(np.ascontiguousarray(update))})
        weight = MetricRecord({fedavg.weighted_by_key: 1})
        return RecordDict({fedavg.arrayrecord_key: arrays, "metrics": weight})

    def aggregate(
        self,
        round_number: int,
        global_weights: np.ndarray,
        updates: Sequence[np.ndarray],
        *,
        asked: int | None = None,
    ) -> np.ndarray | None:
        """The new global model: clipped, uniformly averaged, noised updates (by Flower).

        `asked` is how many sites were asked to train this round (default
        `sites_per_round`; fewer when fewer training sites are left): the noise is
        `sigma * C / asked`. None when Flower refuses to release (accounted mode needs
        an update from every site asked); `last_refusal` then says why, and nothing is
        charged.
        """
        asked = self.sites_per_round if asked is None else asked
        if not 0 < asked <= self.sites_per_round:
            raise ValueError(f"asked={asked} sites; must be 1..{self.sites_per_round}")
        self._check_vector("the global model", global_weights)
        for index, update in enumerate(updates):
            self._check_vector(f"update {index}", update)
            if update.dtype != global_weights.dtype:
                raise ValueError(
                    f"update {index} has dtype {update.dtype}, the model {global_weights.dtype}"
                )
        if len(updates) > asked:
            raise ValueError(f"{len(updates)} updates but only {asked} sites were asked")
        self.last_refusal = None
        wrapper, fedavg = self._wrapper(asked)
        contents = [self._reply_content(fedavg, update) for update in updates]
        current = ArrayRecord({rk.WEIGHTS_ARRAY: Array(np.ascontiguousarray(global_weights))})
        # Placeholder node ids, one per site asked: the messages are never sent.
        grid = _SelectedSitesGrid(range(1, asked + 1))
        with _python_random_untouched():
            instructions = list(
                wrapper.configure_train(round_number, current, ConfigRecord(), grid)
            )
        replies = [
            Message(content, reply_to=instruction)
            for content, instruction in zip(contents, instructions, strict=False)
        ]
        with _os_seeded_numpy_global_rng():
            released, _ = wrapper.aggregate_train(round_number, replies)
        if released is None:
            self.last_refusal = f"central DP: {len(updates)} of {asked} sites' updates; " + (
                "the accountant needs all of them"
                if self.accountant is not None
                else "nothing to aggregate"
            )
            logger.warning("round %d: no release: %s", round_number, self.last_refusal)
            return None
        if self.accountant is None:
            self._unaccounted_releases += 1
        vector = released[rk.WEIGHTS_ARRAY].numpy()
        return np.asarray(vector, dtype=global_weights.dtype).reshape(global_weights.shape)

    @property
    def rounds_released(self) -> int:
        """How many noised global models were released so far."""
        if self.accountant is None:
            return self._unaccounted_releases
        return self.accountant.num_releases

    def spent(self) -> dict[str, float | str | None]:
        """Client-level (epsilon, delta) of every release so far, for `results.json`.

        epsilon is None when `noise_multiplier` is 0 and something was released: no bound.
        """
        epsilon: float | None
        if self.accountant is not None:
            epsilon = float(self.accountant.get_privacy_spent().epsilon)
        else:
            epsilon = 0.0 if self._unaccounted_releases == 0 else None
        return {
            "epsilon": epsilon,
            "delta": self.settings.delta,
            "accountant": ACCOUNTANT_NAME if self.accountant is not None else "none",
            "rounds_released": self.rounds_released,
            "noise_multiplier": self.settings.noise_multiplier,
            "clipping_norm": self.settings.clipping_norm,
            "sites_per_round": self.sites_per_round,
        }

    def state(self) -> dict[str, object]:
        """Everything needed to resume the tally after a restart (JSON-serialisable)."""
        return {
            "version": _STATE_VERSION,
            "accountant": None if self.accountant is None else self.accountant.state_dict(),
            "unaccounted_releases": self._unaccounted_releases,
        }

    def restore(self, state: dict[str, object]) -> None:
        """Resume from `state()`; Flower refuses a state of other settings."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown central privacy state version {state.get('version')!r}")
        accountant_state = state.get("accountant")
        if (accountant_state is None) != (self.accountant is None):
            raise ValueError("central privacy state does not match the noise setting")
        if self.accountant is not None:
            if not isinstance(accountant_state, dict):
                raise ValueError("central privacy state: accountant state is not a mapping")
            self.accountant.load_state_dict(accountant_state)
        releases = state.get("unaccounted_releases", 0)
        if not isinstance(releases, int) or releases < 0:
            raise ValueError("central privacy state: bad unaccounted_releases")
        self._unaccounted_releases = releases
