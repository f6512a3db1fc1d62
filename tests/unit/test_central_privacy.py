"""Client-level DP at the server: clipping, uniform mean, noise scale and accounting,
all done by Flower's DifferentialPrivacyServerSideFixedClipping and RdpAccountant."""

from __future__ import annotations

import itertools
import json
import math
import random

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant as DpAccountingRdp
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.supercore.task_identity import TaskIdentity

from consortia.common.config.privacy_settings import CentralPrivacySettings
from consortia.server.aggregation.central_privacy import ACCOUNTANT_NAME, CentralPrivacy


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower's runtime sets in a ServerApp process before the app builds messages."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def _central(
    sigma: float, clip: float, sites: int, size: int, delta: float = 1e-3
) -> CentralPrivacy:
    settings = CentralPrivacySettings(
        enabled=True, noise_multiplier=sigma, clipping_norm=clip, delta=delta
    )
    return CentralPrivacy(settings, sites_per_round=sites, layout_size=size)


def _clipped_mean(g: np.ndarray, updates: list[np.ndarray], clip: float) -> np.ndarray:
    """Hand computation in float64: clip every (update - g) to `clip`, plain mean."""
    deltas = []
    for u in updates:
        d = u.astype(np.float64) - g.astype(np.float64)
        deltas.append(d * min(1.0, clip / float(np.linalg.norm(d))))
    return g.astype(np.float64) + np.mean(deltas, axis=0)


def _with_norm(rng: np.random.Generator, g: np.ndarray, norm: float) -> np.ndarray:
    direction = rng.normal(size=g.size)
    return (g + direction / np.linalg.norm(direction) * norm).astype(np.float32)


def test_large_update_clipped_to_exactly_the_norm_small_one_untouched() -> None:
    rng = np.random.default_rng(1)
    g = rng.normal(size=500).astype(np.float32)
    big = _with_norm(rng, g, 40.0)
    small = _with_norm(rng, g, 0.3)
    central = _central(0.0, 2.0, sites=1, size=g.size)
    clipped = central.aggregate(1, g, [big])
    assert clipped is not None and clipped.dtype == np.float32
    step = clipped.astype(np.float64) - g
    assert np.linalg.norm(step) == pytest.approx(2.0, rel=1e-5)
    direction = (big.astype(np.float64) - g) / np.linalg.norm(big.astype(np.float64) - g)
    np.testing.assert_allclose(step / np.linalg.norm(step), direction, atol=1e-5)
    kept = central.aggregate(2, g, [small])
    assert kept is not None
    np.testing.assert_allclose(kept, small, atol=1e-6)


def test_without_noise_result_is_uniform_mean_of_clipped_updates() -> None:
    rng = np.random.default_rng(2)
    g = rng.normal(size=1000).astype(np.float32)
    updates = [_with_norm(rng, g, n) for n in (0.5, 3.0, 25.0, 0.9)]
    central = _central(0.0, 1.0, sites=4, size=g.size)
    result = central.aggregate(1, g, updates)
    assert result is not None
    expected = _clipped_mean(g, updates, 1.0)
    np.testing.assert_allclose(result, expected, atol=2e-6)
    # Not the plain mean: the clip changed it.
    assert np.abs(np.mean(updates, axis=0) - expected).max() > 0.1
    assert central.spent()["epsilon"] is None
    assert central.spent()["accountant"] == "none"
    assert central.rounds_released == 1


def test_noise_std_is_sigma_clip_over_sites() -> None:
    rng = np.random.default_rng(3)
    size, sites, sigma, clip = 200_000, 4, 2.0, 0.5
    g = rng.normal(size=size).astype(np.float32)
    updates = [_with_norm(rng, g, n) for n in (0.2, 1.0, 3.0, 0.4)]
    central = _central(sigma, clip, sites=sites, size=size)
    result = central.aggregate(1, g, updates)
    assert result is not None
    noise = result.astype(np.float64) - _clipped_mean(g, updates, clip)
    expected_std = sigma * clip / sites
    assert central.noise_std() == pytest.approx(expected_std)
    # Sampling error of the std over 200k draws is about 0.16 %; allow 2 %.
    assert np.std(noise) == pytest.approx(expected_std, rel=0.02)
    assert abs(np.mean(noise)) < 5 * expected_std / math.sqrt(size)
    within_one_std = np.mean(np.abs(noise) < expected_std)
    assert within_one_std == pytest.approx(0.6827, abs=0.01)


def test_noise_ignores_seeds_and_leaves_the_global_generators_alone() -> None:
    rng = np.random.default_rng(4)
    g = np.zeros(1000, dtype=np.float32)
    updates = [_with_norm(rng, g, 1.0) for _ in range(2)]
    central = _central(1.0, 1.0, sites=2, size=g.size)
    np.random.seed(0)
    expected_numpy = np.random.rand(5)
    random.seed(0)
    expected_python = random.random()
    np.random.seed(0)
    random.seed(0)
    first = central.aggregate(1, g, updates)
    # The run's own random streams go on as if the release had not happened.
    np.testing.assert_array_equal(np.random.rand(5), expected_numpy)
    assert random.random() == expected_python
    np.random.seed(0)
    second = central.aggregate(2, g, updates)
    assert first is not None and second is not None
    assert not np.allclose(first, second)


def test_fewer_sites_asked_scales_noise_and_costs_the_same() -> None:
    rng = np.random.default_rng(8)
    size, sigma, clip = 100_000, 1.0, 1.0
    g = np.zeros(size, dtype=np.float32)
    updates = [_with_norm(rng, g, 5.0) for _ in range(2)]
    central = _central(sigma, clip, sites=4, size=size)
    with pytest.raises(ValueError, match="asked=5"):
        central.aggregate(1, g, updates, asked=5)
    result = central.aggregate(1, g, updates, asked=2)
    assert result is not None
    noise = result.astype(np.float64) - _clipped_mean(g, updates, clip)
    assert central.noise_std(2) == pytest.approx(0.5)
    assert np.std(noise) == pytest.approx(0.5, rel=0.02)
    assert central.aggregate(2, g, updates[:1], asked=2) is None
    full = _central(sigma, clip, sites=4, size=size)
    assert full.aggregate(1, g, [*updates, *updates]) is not None
    assert central.spent()["epsilon"] == pytest.approx(full.spent()["epsilon"], rel=1e-12)
    assert central.spent()["rounds_released"] == 1


def _exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism of sensitivity 1 (Balle & Wang 2018)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_of(eps: float) -> float:
        return phi(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * phi(
            -eps * sigma - 1 / (2 * sigma)
        )

    low, high = 0.0, 200.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_of(mid) > delta else (low, mid)
    return high


def _classic_rdp_epsilon(sigma: float, releases: int, delta: float) -> float:
    """k Gaussian releases: RDP k*a/(2 sigma^2), converted with Mironov's bound."""
    orders = [1 + i / 100 for i in range(1, 20_000)]
    return min(releases * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in orders)


def test_epsilon_grows_and_matches_flower_and_dp_accounting() -> None:
    rng = np.random.default_rng(5)
    sigma, delta, sites = 1.5, 1e-4, 3
    g = np.zeros(50, dtype=np.float32)
    central = _central(sigma, 1.0, sites=sites, size=g.size, delta=delta)
    assert central.spent()["epsilon"] == 0.0
    epsilons = []
    for round_number in range(1, 5):
        updates = [_with_norm(rng, g, 2.0) for _ in range(sites)]
        assert central.aggregate(round_number, g, updates) is not None
        spent = central.spent()
        assert spent["rounds_released"] == round_number
        assert spent["delta"] == delta
        assert spent["accountant"] == ACCOUNTANT_NAME
        epsilon = spent["epsilon"]
        assert isinstance(epsilon, float)
        epsilons.append(epsilon)
    assert all(b > a for a, b in itertools.pairwise(epsilons))

    flower = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    flower.compose(GaussianPrivacyEvent(sigma, sites, sites), count=4)
    assert epsilons[-1] == pytest.approx(flower.get_privacy_spent().epsilon, rel=1e-12)

    # dp_accounting, composed by hand: the same RDP backend and orders, so within 1e-9.
    reference = DpAccountingRdp()
    for _ in range(4):
        reference.compose(dp_accounting.GaussianDpEvent(sigma))
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta), rel=1e-9)

    # Independent of any library: four releases at sigma are one at sigma / 2. RDP's
    # epsilon lies between the exact Gaussian epsilon and the classic RDP conversion,
    # and within 15 % of the exact value.
    exact = _exact_gaussian_epsilon(sigma / 2, delta)
    assert exact <= epsilons[-1] <= _classic_rdp_epsilon(sigma, 4, delta)
    assert epsilons[-1] <= 1.15 * exact


def test_missing_site_releases_nothing_and_charges_nothing() -> None:
    rng = np.random.default_rng(6)
    g = np.zeros(20, dtype=np.float32)
    central = _central(1.0, 1.0, sites=3, size=g.size)
    updates = [_with_norm(rng, g, 1.0) for _ in range(3)]
    assert central.aggregate(1, g, updates) is not None
    before = central.spent()
    assert central.aggregate(2, g, updates[:2]) is None
    assert central.last_refusal is not None and "2 of 3" in central.last_refusal
    assert central.spent() == before
    assert central.aggregate(2, g, updates) is not None
    assert central.last_refusal is None
    assert central.spent()["rounds_released"] == 2


def test_state_survives_a_restart() -> None:
    rng = np.random.default_rng(7)
    g = np.zeros(20, dtype=np.float32)
    central = _central(1.0, 1.0, sites=2, size=g.size)
    for round_number in (1, 2):
        central.aggregate(round_number, g, [_with_norm(rng, g, 1.0) for _ in range(2)])
    state = json.loads(json.dumps(central.state()))
    resumed = _central(1.0, 1.0, sites=2, size=g.size)
    resumed.restore(state)
    assert resumed.spent() == central.spent()
    with pytest.raises(ValueError, match="configuration"):
        _central(1.0, 1.0, sites=2, size=g.size, delta=1e-5).restore(state)
    with pytest.raises(ValueError, match="noise setting"):
        _central(0.0, 1.0, sites=2, size=g.size).restore(state)


def test_bad_input_is_refused() -> None:
    g = np.zeros(10, dtype=np.float32)
    central = _central(1.0, 1.0, sites=2, size=g.size)
    with pytest.raises(ValueError, match="update 1 has shape"):
        central.aggregate(1, g, [g, np.zeros(11, dtype=np.float32)])
    with pytest.raises(ValueError, match="dtype"):
        central.aggregate(1, g, [g, np.zeros(10, dtype=np.float64)])
    with pytest.raises(ValueError, match="3 updates"):
        central.aggregate(1, g, [g, g, g])
    with pytest.raises(ValueError, match="sites_per_round"):
        _central(1.0, 1.0, sites=0, size=10)
