"""The node's privacy gate: rounds are planned within the site's policy, refused when
they would break it, and recorded so that epsilon continues across restarts and runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from consortia.client.data.site_data import SiteArrays
from consortia.client.privacy.budget import (
    PrivacyBudget,
    PrivacyRefusedError,
    RoundRequest,
    plan_round,
    record_round,
)
from consortia.client.privacy.dp_training import train_local_dp
from consortia.common.audit.check import read_audit_log
from consortia.common.audit.log import AUDIT_LOG_FILE, PRIVACY_SPENT
from consortia.common.config.privacy_settings import PrivacyPolicy, SamplePrivacySettings
from consortia.common.config.settings import SiteSettings, Task, load_site_settings
from consortia.common.networks.models import ModelSettings, build_model
from consortia.common.privacy.accounting import epsilon_of, make_accountant, poisson_plan
from consortia.common.privacy.ledger import PrivacyLedger, ledger_lock, ledger_path
from consortia.common.wire import records as rk

FINGERPRINT = "ab" * 32


def _config_hash(run_id: str) -> str:
    """A distinct approved config per run (the tests of F7 below share one on purpose)."""
    return hashlib.sha256(run_id.encode()).hexdigest()


def _request(run_id: str = "run-1", round_number: int = 1, **privacy: object) -> RoundRequest:
    return RoundRequest(
        run_id=run_id,
        config_hash=_config_hash(run_id),
        round=round_number,
        total_rounds=3,
        local_epochs=1,
        batch_size=8,
        privacy=SamplePrivacySettings.model_validate(privacy),
    )


def _data(n: int = 32) -> SiteArrays:
    rng = np.random.default_rng(0)
    images = rng.random((n, 1, 8, 8), dtype=np.float32)
    return SiteArrays(images, (images[:, 0] > 0.5).astype(np.int64))


def _model() -> torch.nn.Module:
    return build_model(
        ModelSettings(architecture="unet", channels=(4, 8), strides=(2,), norm_groups=2)
    )


def _train_round(
    ledger: PrivacyLedger, path: Path, policy: PrivacyPolicy, request: RoundRequest
) -> float:
    data = _data()
    dp_round = plan_round(policy, ledger, request, len(data))
    assert dp_round is not None
    result, spend = train_local_dp(
        _model(),
        data,
        Task.SEGMENTATION,
        epochs=request.local_epochs,
        batch_size=request.batch_size,
        learning_rate=1e-3,
        device=torch.device("cpu"),
        dp=dp_round,
    )
    return record_round(ledger, path, request, spend, result.num_examples).epsilon


def test_target_epsilon_sets_the_noise_for_the_whole_run() -> None:
    policy = PrivacyPolicy(max_epsilon=50.0, delta=1e-5)
    ledger = PrivacyLedger(FINGERPRINT, "site")
    dp_round = plan_round(policy, ledger, _request(target_epsilon=4.0), 32)
    assert dp_round is not None
    plan = poisson_plan(32, 8)
    planned = [(dp_round.noise_multiplier, plan.sample_rate, plan.steps(1) * 3)]
    run_epsilon = epsilon_of(planned, policy.delta, "rdp")
    assert 3.9 <= run_epsilon <= 4.0


def test_fixed_noise_multiplier_is_used_as_given() -> None:
    dp_round = plan_round(
        PrivacyPolicy(), PrivacyLedger(FINGERPRINT, "s"), _request(noise_multiplier=1.3), 64
    )
    assert dp_round is not None and dp_round.noise_multiplier == 1.3


@pytest.mark.parametrize(
    ("policy", "privacy", "match"),
    [
        (PrivacyPolicy(), {"enabled": False}, "only with differential privacy"),
        (PrivacyPolicy(min_noise_multiplier=2.0), {"noise_multiplier": 1.0}, "below the site"),
        (PrivacyPolicy(max_grad_norm=0.5), {"max_grad_norm": 1.0}, "clipping norm"),
        (PrivacyPolicy(delta=0.05), {}, "not below 1/N"),
        (PrivacyPolicy(max_epsilon=1.0), {"noise_multiplier": 0.6}, "over the site's limit"),
    ],
)
def test_policy_refusals_say_why(
    policy: PrivacyPolicy, privacy: dict[str, object], match: str
) -> None:
    with pytest.raises(PrivacyRefusedError, match=match):
        plan_round(policy, PrivacyLedger(FINGERPRINT, "s"), _request("run-1", 1, **privacy), 32)


def test_non_private_round_only_when_the_site_allows_it() -> None:
    allowed = PrivacyPolicy(allow_non_private=True)
    ledger = PrivacyLedger(FINGERPRINT, "s")
    assert plan_round(allowed, ledger, _request(enabled=False), 32) is None


def test_epsilon_continues_across_restarts_and_runs(tmp_path: Path) -> None:
    """Each round reopens the ledger from disk, as a restarted node does; the total
    equals one accountant over every step, and the run target is checked per run."""
    policy = PrivacyPolicy(max_epsilon=100.0, delta=1e-5)
    path = ledger_path(tmp_path / "privacy", FINGERPRINT)
    reported = []
    requests = [
        _request("run-1", 1, noise_multiplier=1.0),
        _request("run-1", 2, noise_multiplier=1.0),
    ]
    requests.append(_request("run-2", 1, noise_multiplier=1.5))
    for request in requests:
        with ledger_lock(path):
            ledger = PrivacyLedger.open(path, FINGERPRINT, "site")  # fresh from disk
            reported.append(_train_round(ledger, path, policy, request))
    entries = PrivacyLedger.load(path).entries
    assert [e.run_id for e in entries] == ["run-1", "run-1", "run-2"]
    assert reported[0] < reported[1] < reported[2]
    single = make_accountant("rdp")
    for entry in entries:
        for _ in range(entry.steps):
            single.step(noise_multiplier=entry.noise_multiplier, sample_rate=entry.sample_rate)
    assert reported[-1] == pytest.approx(single.get_epsilon(delta=1e-5), rel=1e-9)
    # run-2's own epsilon covers only its round.
    only_run_2 = epsilon_of([entries[2].history_entry()], 1e-5, "rdp")
    assert entries[2].run_epsilon == pytest.approx(only_run_2, rel=1e-9)


def test_site_at_its_limit_refuses_the_next_round(tmp_path: Path) -> None:
    path = ledger_path(tmp_path, FINGERPRINT)
    first = _request("run-1", 1, noise_multiplier=0.8)
    ledger = PrivacyLedger.open(path, FINGERPRINT, "site")
    spent = _train_round(ledger, path, PrivacyPolicy(max_epsilon=100.0), first)
    limit = PrivacyPolicy(max_epsilon=spent * 1.2)  # one more round would cross it
    reopened = PrivacyLedger.open(path, FINGERPRINT, "site")
    with pytest.raises(PrivacyRefusedError, match="privacy budget"):
        plan_round(limit, reopened, _request("run-1", 2, noise_multiplier=0.8), 32)
    assert len(PrivacyLedger.load(path).entries) == 1  # a refusal spends nothing


def test_a_retried_round_cannot_exceed_the_run_target(tmp_path: Path) -> None:
    policy = PrivacyPolicy(max_epsilon=100.0)
    path = ledger_path(tmp_path, FINGERPRINT)
    request = RoundRequest(
        run_id="run-1",
        config_hash=_config_hash("run-1"),
        round=1,
        total_rounds=1,
        local_epochs=1,
        batch_size=8,
        privacy=SamplePrivacySettings(target_epsilon=3.0),
    )
    ledger = PrivacyLedger.open(path, FINGERPRINT, "site")
    _train_round(ledger, path, policy, request)
    with pytest.raises(PrivacyRefusedError, match="run's target"):
        plan_round(policy, PrivacyLedger.open(path, FINGERPRINT, "site"), request, 32)


def _site(tmp_path: Path, max_epsilon: float = 100.0) -> SiteSettings:
    """A real site config (its state folder holds the audit log and the releases)."""
    np.savez(tmp_path / "data.npz", x=np.zeros(1))
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "north"\n[data]\npath = "data.npz"\n[node]\ninsecure = true\n'
        f'state_dir = "state"\n[privacy]\nmax_epsilon = {max_epsilon}\n',
        encoding="utf-8",
    )
    return load_site_settings(config)


def test_the_budget_plans_commits_and_resends_a_round(tmp_path: Path) -> None:
    """Plan, DP training, commit: the ledger entry, the kept release and the node's
    `privacy_spent` record agree with the privacy record that goes with the update;
    the same round asked again is the kept release (no second entry); a round that
    the run does not have is refused before anything is spent."""
    site = _site(tmp_path)
    request = _request("run-1", 1, noise_multiplier=1.0)
    data, model = _data(), _model()
    global_sha = "c" * 64
    with PrivacyBudget.locked(site, FINGERPRINT, request) as budget:
        assert budget.kept(global_sha) is None
        dp_round = budget.plan(len(data))
        assert dp_round is not None and dp_round.noise_multiplier == 1.0
        result, spend = train_local_dp(
            model,
            data,
            Task.SEGMENTATION,
            epochs=1,
            batch_size=8,
            learning_rate=1e-3,
            device=torch.device("cpu"),
            dp=dp_round,
        )
        weights = np.arange(5, dtype=np.float32)
        record = budget.commit(spend, result.num_examples, weights, global_sha, flower_run=7)
        head = budget.head
    (entry,) = PrivacyLedger.load(ledger_path(site.ledger_dir, FINGERPRINT)).entries
    assert head.entries == 1
    assert (entry.run_id, entry.round, entry.num_examples) == ("run-1", 1, len(data))
    assert entry.config_hash == request.config_hash
    assert record[rk.P_EPSILON] == entry.epsilon == spend.epsilon
    assert record[rk.P_RUN_EPSILON] == entry.run_epsilon
    assert record[rk.P_STEPS] == spend.steps and record[rk.P_NOISE_MULTIPLIER] == 1.0
    (spent,) = [
        r for r in read_audit_log(site.state_path / AUDIT_LOG_FILE) if r["event"] == PRIVACY_SPENT
    ]
    assert (spent["flower_run"], spent["round"], spent["epsilon"]) == (7, 1, entry.epsilon)
    assert spent["dataset_fingerprint"] == FINGERPRINT
    with PrivacyBudget.locked(site, FINGERPRINT, request) as again:
        kept = again.kept(global_sha)
        assert kept is not None and kept.privacy == dict(record)
        assert np.array_equal(kept.weights, weights)
        assert kept.metrics == {rk.M_NUM_EXAMPLES: float(len(data))}  # no training loss
    beyond = _request("run-1", 4, noise_multiplier=1.0)  # the run has 3 rounds
    with (
        PrivacyBudget.locked(site, FINGERPRINT, beyond) as refusing,
        pytest.raises(PrivacyRefusedError, match="outside the approved run's rounds"),
    ):
        refusing.plan(len(data))
    assert len(PrivacyLedger.load(ledger_path(site.ledger_dir, FINGERPRINT)).entries) == 1
