"""Aggregation strategies: robust rules, the server optimizer and its saved state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.server.strategy.aggregate import aggregate, aggregate_krum, aggregate_median
from flwr.serverapp.strategy import FedAdam, FedYogi
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from pydantic import ValidationError

from consortia.common.config.settings import RunSettings, load_run_settings
from consortia.common.config.strategy_settings import StrategySettings
from consortia.common.errors import ConfigError
from consortia.server.aggregation import robust as robust_aggregation
from consortia.server.aggregation.factory import build_strategy
from consortia.server.aggregation.fedavg import weighted_average
from consortia.server.aggregation.robust import (
    TooFewUpdatesError,
    coordinate_median,
    krum_scores,
    krum_select,
    trimmed_count,
    trimmed_mean,
)
from consortia.server.aggregation.server_optimizer import (
    OptimizerKind,
    ServerOptimizer,
    StrategyStateError,
)
from consortia.server.aggregation.strategy import (
    DETAIL_KRUM_SCORES,
    DETAIL_TRIMMED_PER_END,
    AggregationStrategy,
    SiteUpdate,
)
from consortia.server.run.state import load_strategy_state, save_strategy_state


def _f32(*rows: list[float]) -> list[np.ndarray]:
    return [np.asarray(row, dtype=np.float32) for row in rows]


def _updates(vectors: list[np.ndarray], examples: list[float] | None = None) -> list[SiteUpdate]:
    counts = examples or [10.0] * len(vectors)
    return [
        SiteUpdate(f"site{i}", vector, count)
        for i, (vector, count) in enumerate(zip(vectors, counts, strict=True))
    ]


def _strategy(name: str, **settings: Any) -> AggregationStrategy:
    return build_strategy(StrategySettings.model_validate({"name": name, **settings}))


# ---- coordinate-wise rules ----------------------------------------------------------


def test_median_of_hand_checked_vectors() -> None:
    odd = _f32([1, 5, 3], [2, 0, 9], [7, 4, 1])
    np.testing.assert_array_equal(coordinate_median(odd), [2, 4, 3])
    even = _f32([1, -4], [2, 0], [3, 8], [10, 1])
    np.testing.assert_array_equal(coordinate_median(even), [2.5, 0.5])
    assert coordinate_median(odd).dtype == np.float32


def test_median_matches_flower_and_does_not_depend_on_chunking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    vectors = [rng.normal(size=1003).astype(np.float32) for _ in range(7)]
    flower = aggregate_median([([v], 1) for v in vectors])[0]
    whole = coordinate_median(vectors)
    np.testing.assert_array_equal(whole, flower)
    monkeypatch.setattr(robust_aggregation, "_CHUNK_VALUES", 50)  # 7 columns per chunk
    np.testing.assert_array_equal(coordinate_median(vectors), whole)


def test_trimmed_mean_cuts_each_end() -> None:
    vectors = _f32([1, 0], [2, 10], [3, 20], [4, 30], [100, -1000])
    assert trimmed_count(5, 0.2) == 1
    # coordinate 0: cut 1 and 100 -> mean(2, 3, 4); coordinate 1: cut -1000 and 30.
    np.testing.assert_allclose(trimmed_mean(vectors, 0.2), [3.0, 10.0])
    # Flower's rule int(fraction * n): two updates at 0.2 trim nothing (a plain mean).
    assert trimmed_count(2, 0.2) == 0
    np.testing.assert_allclose(trimmed_mean(vectors[:2], 0.2), [1.5, 5.0])
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(vectors, 0.5)


def test_trimmed_mean_matches_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.normal(size=501).astype(np.float32) for _ in range(9)]
    flower = trim_mean(np.stack(vectors).astype(np.float64), 0.3)
    np.testing.assert_allclose(trimmed_mean(vectors, 0.3), flower, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(robust_aggregation, "_CHUNK_VALUES", 40)
    np.testing.assert_allclose(trimmed_mean(vectors, 0.3), flower, rtol=1e-6, atol=1e-7)


def test_no_updates_is_too_few() -> None:
    with pytest.raises(TooFewUpdatesError, match="no updates"):
        coordinate_median([])
    with pytest.raises(TooFewUpdatesError, match="no updates"):
        _strategy("trimmed_mean").aggregate(np.zeros(3, np.float32), [])


# ---- Krum ---------------------------------------------------------------------------


def test_krum_scores_by_hand() -> None:
    vectors = _f32([0.0], [1.0], [2.0], [10.0], [11.0])
    # n=5, f=1: each score sums the squared distances to the 2 nearest others.
    np.testing.assert_allclose(krum_scores(vectors, 1), [5, 2, 5, 65, 82])
    assert krum_select(vectors, 1, keep=1) == [1]
    assert krum_select(vectors, 1, keep=3) == [1, 0, 2]  # ties: lower index first
    with pytest.raises(ValueError, match="keep"):
        krum_select(vectors, 1, keep=5)  # more than n - f


def test_krum_and_multi_krum_match_flower() -> None:
    rng = np.random.default_rng(3)
    vectors = [rng.normal(size=64).astype(np.float32) for _ in range(8)]
    vectors[5] = vectors[5] * 30
    examples = [float(e) for e in rng.integers(5, 50, size=8)]
    results = [([v], int(e)) for v, e in zip(vectors, examples, strict=True)]

    krum = _strategy("krum", byzantine_sites=2).aggregate(
        np.zeros(64, np.float32), _updates(vectors, examples)
    )
    np.testing.assert_array_equal(krum.weights, aggregate_krum(results, 2, 0)[0])
    assert len(krum.kept) == 1
    assert "site5" not in krum.kept
    assert set(krum.details[DETAIL_KRUM_SCORES]) == {f"site{i}" for i in range(8)}

    multi = _strategy("multi_krum", byzantine_sites=2, multi_krum_keep=4).aggregate(
        np.zeros(64, np.float32), _updates(vectors, examples)
    )
    chosen = krum_select(vectors, 2, keep=4)
    assert multi.kept == sorted(f"site{i}" for i in chosen)
    # Flower's MultiKrum: the kept updates' example-weighted mean.
    np.testing.assert_allclose(multi.weights, aggregate_krum(results, 2, 4)[0], rtol=1e-5)
    np.testing.assert_allclose(
        multi.weights, aggregate([results[i] for i in chosen])[0], rtol=1e-5, atol=1e-6
    )


def test_krum_distances_stay_exact_for_close_models() -> None:
    # Vectors far from the origin and close to each other: ||x||^2 + ||y||^2 - 2 x.y
    # (Flower's formula) loses the differences even in float64 unless the vectors are
    # centred first; the scores must match a direct sum of squared differences.
    rng = np.random.default_rng(4)
    base = rng.normal(loc=1e4, size=20_000)
    vectors = [(base + rng.normal(scale=1e-2, size=base.size)).astype(np.float32) for _ in range(6)]
    as64 = [v.astype(np.float64) for v in vectors]
    exact = np.array([[np.sum((a - b) ** 2) for b in as64] for a in as64])
    np.fill_diagonal(exact, np.inf)
    expected = np.sort(exact, axis=1)[:, :3].sum(axis=1)  # n - f - 2 = 3
    np.testing.assert_allclose(krum_scores(vectors, 1), expected, rtol=1e-6)


def test_krum_with_too_few_updates_raises() -> None:
    vectors = _f32([0.0], [1.0], [2.0], [3.0])
    with pytest.raises(TooFewUpdatesError, match=r"at least 5 updates .*got 4"):
        krum_scores(vectors, 1)
    strategy = _strategy("multi_krum", byzantine_sites=1)
    assert strategy.updates_needed() == 5
    with pytest.raises(TooFewUpdatesError, match=r'"multi_krum" .* at least 5 updates'):
        strategy.aggregate(np.zeros(1, np.float32), _updates(vectors))


def test_multi_krum_keeps_at_most_n_minus_f() -> None:
    vectors = [np.full(3, float(i), np.float32) for i in range(5)]
    result = _strategy("multi_krum", byzantine_sites=1, multi_krum_keep=9).aggregate(
        np.zeros(3, np.float32), _updates(vectors)
    )
    assert len(result.kept) == 4
    default = _strategy("multi_krum", byzantine_sites=1).aggregate(
        np.zeros(3, np.float32), _updates(vectors)
    )
    assert len(default.kept) == 4  # multi_krum_keep = 0: all but byzantine_sites


# ---- robustness against one bad site ------------------------------------------------


@pytest.mark.parametrize("attack", ["sign_flip", "times_100"])
def test_robust_rules_resist_one_bad_site_fedavg_does_not(attack: str) -> None:
    rng = np.random.default_rng(5)
    size = 2_000
    global_weights = rng.normal(size=size).astype(np.float32)
    direction = rng.normal(scale=0.1, size=size)
    honest = [
        (global_weights + direction + rng.normal(scale=0.01, size=size)).astype(np.float32)
        for _ in range(4)
    ]
    bad_delta = -direction if attack == "sign_flip" else 100 * direction
    bad = (global_weights + bad_delta).astype(np.float32)
    clean_mean = np.mean(np.stack(honest).astype(np.float64), axis=0)
    updates = _updates([*honest[:2], bad, *honest[2:]])
    scale = float(np.linalg.norm(direction))

    def error(name: str, **settings: Any) -> float:
        result = _strategy(name, **settings).aggregate(global_weights, updates)
        return float(np.linalg.norm(result.weights - clean_mean)) / scale

    assert error("fedavg") > 0.3
    for name in ("median", "trimmed_mean", "krum", "multi_krum"):
        assert error(name, byzantine_sites=1) < 0.1, name
    multi = _strategy("multi_krum", byzantine_sites=1).aggregate(global_weights, updates)
    assert "site2" not in multi.kept
    trimmed = _strategy("trimmed_mean").aggregate(global_weights, updates)
    assert trimmed.details[DETAIL_TRIMMED_PER_END] == 1


# ---- linear strategies --------------------------------------------------------------


def test_fedavg_and_fedprox_are_the_weighted_mean() -> None:
    vectors = _f32([0, 4], [2, 0], [4, 8])
    examples = [1.0, 1.0, 2.0]
    expected = weighted_average(list(zip(vectors, examples, strict=True)))
    np.testing.assert_allclose(expected, [2.5, 5.0])
    for strategy in (_strategy("fedavg"), _strategy("fedprox", proximal_mu=0.1)):
        assert strategy.linear
        result = strategy.aggregate(np.zeros(2, np.float32), _updates(vectors, examples))
        np.testing.assert_array_equal(result.weights, expected)
        assert result.weights.dtype == np.float32
        assert result.kept == ["site0", "site1", "site2"]
        np.testing.assert_array_equal(
            strategy.apply_mean(np.zeros(2, np.float32), expected), expected
        )


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "median", "trimmed_mean", "multi_krum"])
def test_the_result_does_not_depend_on_the_order_updates_arrive_in(name: str) -> None:
    # Summed in another order, some of these weighted means differ in their last bit
    # (16 of 200,000 values for FedAvg); a resumed run must redo the very same bits.
    rng = np.random.default_rng(0)
    size = 200_000
    vectors = [
        (rng.normal(size=size) * 10 ** rng.uniform(-3, 1)).astype(np.float32) for _ in range(5)
    ]
    updates = _updates(vectors, [float(rng.integers(5, 50)) for _ in range(5)])
    start = np.zeros(size, np.float32)
    first = _strategy(name).aggregate(start, updates)
    again = _strategy(name).aggregate(start, updates[::-1])
    assert again.weights.tobytes() == first.weights.tobytes()
    assert again.kept == first.kept == sorted(first.kept)


def test_robust_strategies_refuse_a_mean_alone() -> None:
    for name in ("median", "trimmed_mean", "krum", "multi_krum"):
        strategy = _strategy(name)
        assert not strategy.linear
        with pytest.raises(ValueError, match="needs each site's update"):
            strategy.apply_mean(np.zeros(2, np.float32), np.ones(2, np.float32))


def test_updates_must_fit_the_model() -> None:
    with pytest.raises(ValueError, match="site1 has shape"):
        _strategy("median").aggregate(
            np.zeros(2, np.float32), _updates(_f32([1, 2], [1, 2, 3], [0, 0]))
        )


# ---- FedAdam / FedYogi --------------------------------------------------------------


def _reference_steps(
    kind: str, global_weights: np.ndarray, means: list[np.ndarray], lr: float, b1: float, b2: float
) -> np.ndarray:
    """The FedOpt update written out directly (float64, Flower's bias correction)."""
    tau = 1e-3
    x = global_weights.astype(np.float64)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for t, mean in enumerate(means, start=1):
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if kind == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
            eta = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            eta = lr
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_server_optimizer_matches_a_direct_computation(kind: OptimizerKind) -> None:
    rng = np.random.default_rng(6)
    weights = rng.normal(size=300).astype(np.float32)
    start = weights.copy()
    offsets = [rng.normal(scale=0.05, size=300) for _ in range(4)]
    optimizer = ServerOptimizer(kind, 0.1, 0.8, 0.95, 1e-3)
    means = []
    for offset in offsets:
        mean = (weights + offset).astype(np.float32)
        means.append(mean.astype(np.float64))
        weights = optimizer.step(weights, mean)
    assert weights.dtype == np.float32
    # The direct computation sees the same means but keeps x in float64 all along.
    expected = _reference_steps(kind, start, means, 0.1, 0.8, 0.95)
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-5)
    assert np.max(np.abs(weights - start)) > 0.01  # the optimizer moved the model


@pytest.mark.usefixtures("server_task_identity")
@pytest.mark.parametrize(("kind", "flower_class"), [("fedadam", FedAdam), ("fedyogi", FedYogi)])
def test_strategy_matches_flowers_fedopt(kind: str, flower_class: type[FedAdam | FedYogi]) -> None:
    rng = np.random.default_rng(7)
    flower = flower_class(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    ours = _strategy(kind, server_learning_rate=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    weights = rng.normal(size=40).astype(np.float32)
    for server_round in (1, 2, 3):
        models = [(weights + rng.normal(scale=0.1, size=40)).astype(np.float32) for _ in range(3)]
        examples = [10, 25, 40]
        flower.current_arrays = {"w": weights.copy()}
        replies = [
            Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({"w": Array(model)}),
                        "metrics": MetricRecord({"num-examples": count}),
                    }
                ),
                dst_node_id=1,
                message_type="train",
            )
            for model, count in zip(models, examples, strict=True)
        ]
        arrays, _ = flower.aggregate_train(server_round, replies)
        assert arrays is not None
        result = ours.aggregate(weights, _updates(models, [float(e) for e in examples]))
        np.testing.assert_allclose(result.weights, arrays["w"].numpy(), rtol=1e-5, atol=1e-6)
        weights = result.weights


def _run_rounds(strategy: AggregationStrategy, weights: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    for _ in range(3):
        models = [
            (weights + rng.normal(scale=0.1, size=weights.size)).astype(np.float32)
            for _ in range(3)
        ]
        weights = strategy.aggregate(weights, _updates(models, [5.0, 7.0, 9.0])).weights
    return weights


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_state_round_trip_resumes_bit_for_bit(kind: str) -> None:
    start = np.random.default_rng(8).normal(size=500).astype(np.float32)
    strategy = _strategy(kind)
    weights = _run_rounds(strategy, start, seed=1)
    saved = strategy.state_dict()
    assert saved["name"] == kind
    assert saved["m"].dtype == np.float32 and saved["m"].shape == (500,)
    straight = _run_rounds(strategy, weights, seed=2)

    resumed = _strategy(kind)
    resumed.load_state_dict(saved, vector_size=500)
    after_reload = _run_rounds(resumed, weights, seed=2)
    np.testing.assert_array_equal(after_reload, straight)
    # Without the saved moments the run would go elsewhere: the state matters.
    fresh = _run_rounds(_strategy(kind), weights, seed=2)
    assert not np.array_equal(fresh, straight)


def test_state_survives_the_run_folders_npz_file(tmp_path: Path) -> None:
    # The checkpoint format of a run folder (checkpoints/strategy-NNN.npz).
    for kind in ("fedyogi", "median"):
        strategy = _strategy(kind)
        if kind == "fedyogi":
            before = _strategy(kind)
            before.load_state_dict(
                load_strategy_state(_saved(tmp_path / "empty.npz", strategy.state_dict()))
            )  # the state before the first step (empty moments) also round-trips
            _run_rounds(strategy, np.ones(50, np.float32), seed=4)
        loaded = load_strategy_state(_saved(tmp_path / f"{kind}.npz", strategy.state_dict()))
        resumed = _strategy(kind)
        resumed.load_state_dict(loaded, vector_size=50)
        weights = np.full(50, 2.0, np.float32)
        np.testing.assert_array_equal(
            _run_rounds(resumed, weights, seed=5), _run_rounds(strategy, weights, seed=5)
        )


def _saved(path: Path, state: dict[str, Any]) -> Path:
    save_strategy_state(path, state)
    return path


def _corrupt(state: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**state, key: value}


def test_load_state_dict_rejects_bad_states() -> None:
    strategy = _strategy("fedadam")
    _run_rounds(strategy, np.zeros(20, np.float32), seed=3)
    good = strategy.state_dict()
    m = good["m"]
    bad_states = {
        "name": _corrupt(good, "name", "fedyogi"),
        "kind": _corrupt(good, "kind", "fedyogi"),
        "beta_1": _corrupt(good, "beta_1", 0.5),
        "step": _corrupt(good, "step", -1),
        "m has shape": _corrupt(good, "m", np.zeros((20, 1), np.float32)),
        "v has shape": _corrupt(good, "v", np.zeros(21, np.float32)),
        "m holds NaN": _corrupt(
            good, "m", np.where(np.arange(20) == 3, np.nan, m).astype(np.float32)
        ),
        "dtype float64": _corrupt(good, "m", m.astype(np.float64)),
        "v has negative": _corrupt(good, "v", -np.ones(20, np.float32)),
        "missing v": {k: v for k, v in good.items() if k != "v"},
        "unknown extra": {**good, "extra": 1},
    }
    for expected, state in bad_states.items():
        target = _strategy("fedadam")
        with pytest.raises(StrategyStateError, match=expected):
            target.load_state_dict(state)
        assert target.optimizer is not None and target.optimizer.steps == 0  # unchanged
    with pytest.raises(StrategyStateError, match="the model 30"):
        _strategy("fedadam").load_state_dict(good, vector_size=30)


def test_stateless_strategies_check_their_name() -> None:
    median = _strategy("median")
    assert median.state_dict() == {"name": "median"}
    median.load_state_dict({"name": "median"})
    with pytest.raises(StrategyStateError, match="name is 'krum'"):
        median.load_state_dict(_strategy("krum").state_dict())
    with pytest.raises(StrategyStateError, match="unknown m"):
        median.load_state_dict({"name": "median", "m": np.zeros(2, np.float32)})
    with pytest.raises(StrategyStateError, match="name is 'fedavg'"):
        _strategy("fedadam").load_state_dict({"name": "fedavg"})


# ---- settings -----------------------------------------------------------------------


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="needs proximal_mu > 0"):
        StrategySettings(name="fedprox")
    with pytest.raises(ValidationError, match="cannot combine with secure_aggregation"):
        RunSettings.model_validate(
            {"strategy": {"name": "krum"}, "secure_aggregation": {"mode": "on"}}
        )
    robust = RunSettings.model_validate({"strategy": {"name": "median"}})
    assert not robust.secure_aggregation_for(10)  # "auto" turns it off
    linear = RunSettings.model_validate({"strategy": {"name": "fedyogi"}})
    assert linear.secure_aggregation_for(10)


def test_run_config_strategy_table(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[run.strategy]\nname = "trimmed_mean"\ntrim_fraction = 0.1\n')
    assert load_run_settings(config).strategy.trim_fraction == 0.1
    config.write_text('[run.strategy]\nname = "krum"\n[run.secure_aggregation]\nmode = "on"\n')
    with pytest.raises(ConfigError, match="krum"):
        load_run_settings(config)


def test_fedavgm_keeps_a_velocity_across_rounds_and_resumes_it() -> None:
    """FedAvgM (Hsu et al. 2019): v = momentum * v + (mean - global), global += eta * v;
    the default server step is 1.0 (FedAdam's 0.01 would barely move the model)."""
    settings = StrategySettings(name="fedavgm", server_momentum=0.5)
    assert settings.server_rate == 1.0
    assert StrategySettings(name="fedadam").server_rate == 0.01
    strategy = build_strategy(settings)
    start = np.zeros(4, dtype=np.float32)
    one = strategy.aggregate(start, _updates([_f32([1, 1, 1, 1])[0], _f32([3, 3, 3, 3])[0]]))
    np.testing.assert_allclose(one.weights, [2, 2, 2, 2])  # v = 2: FedAvg's first step
    saved = strategy.state_dict()
    two = strategy.aggregate(one.weights, _updates([_f32([2, 2, 2, 2])[0]] * 2))
    # The mean equals the global model, yet the velocity carries on: v = 0.5 * 2 + 0.
    np.testing.assert_allclose(two.weights, [3, 3, 3, 3])
    resumed = build_strategy(settings)
    resumed.load_state_dict(saved, vector_size=4)
    again = resumed.aggregate(one.weights, _updates([_f32([2, 2, 2, 2])[0]] * 2))
    np.testing.assert_array_equal(again.weights, two.weights)
    with pytest.raises(StrategyStateError, match="beta_1"):
        build_strategy(StrategySettings(name="fedavgm", server_momentum=0.7)).load_state_dict(
            saved, vector_size=4
        )
