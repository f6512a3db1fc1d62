"""The privacy planner: its figures are those of the DP training that follows, it refuses
what it cannot plan with the field at fault, it warns on studies calibrated as unlikely to
learn, and a site's `refuse_if_unlikely_to_learn` makes approval and the node refuse them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from consortia.client.data.dataset import SiteDataset
from consortia.client.privacy.budget import (
    PrivacyRefusedError,
    RoundRequest,
    plan_round,
    record_round,
)
from consortia.client.privacy.cli import site_plan
from consortia.client.privacy.dp_training import train_local_dp
from consortia.common.audit.approvals import ApprovalStore
from consortia.common.cli import build_app
from consortia.common.config.privacy_settings import PrivacyPolicy
from consortia.common.config.settings import (
    DataSettings,
    Role,
    RunSettings,
    SiteInfo,
    SiteSettings,
    Task,
    load_run_settings,
    load_site_settings,
)
from consortia.common.demo.data import DemoDataSettings, write_site_npz
from consortia.common.errors import ConfigError
from consortia.common.networks.models import ModelSettings, build_model
from consortia.common.privacy.accounting import epsilon_of
from consortia.common.privacy.ledger import PrivacyLedger, ledger_path
from consortia.common.privacy.planner import (
    CALIBRATION,
    LearningOutlook,
    PlanError,
    UnlikelyToLearnError,
    learning_outlook,
    plan_study,
)
from consortia.common.privacy.spend import PrivacySpend
from consortia.common.wire.run_identity import config_hash

RUN_TOML = """\
[run]
name = "tiny-seg"
task = "segmentation"
rounds = {rounds}
min_sites = 2

[run.model]
architecture = "unet"
spatial_dims = 2
channels = [4, 8]
strides = [2]
num_res_units = 0
norm_groups = 2

[run.training]
local_epochs = {epochs}
batch_size = {batch}
learning_rate = 0.002

[run.privacy]
{privacy}
max_grad_norm = 1.0
"""

SITE_TOML = """\
[site]
name = "hospital-a"
role = "{role}"

[data]
path = "data.npz"
format = "npz"

[node]
state_dir = "state"

[privacy]
max_epsilon = {max_epsilon}
delta = 1e-5
{policy}
"""

runner = CliRunner(env={"COLUMNS": "200"})


def _run_toml(
    folder: Path,
    *,
    rounds: int = 2,
    epochs: int = 1,
    batch: int = 8,
    privacy: str = "target_epsilon = 6.0",
) -> Path:
    path = folder / "run.toml"
    text = RUN_TOML.format(rounds=rounds, epochs=epochs, batch=batch, privacy=privacy)
    path.write_text(text, encoding="utf-8")
    return path


def _site_toml(
    folder: Path,
    *,
    cases: int = 40,
    role: str = "train",
    max_epsilon: float = 50.0,
    policy: str = "",
) -> Path:
    data = folder / "data.npz"
    if not data.exists():
        write_site_npz(data, 0, DemoDataSettings(image_size=32, train_cases=cases, test_cases=4))
    path = folder / "site.toml"
    text = SITE_TOML.format(role=role, max_epsilon=max_epsilon, policy=policy)
    path.write_text(text, encoding="utf-8")
    return path


def _request(run: RunSettings, round_number: int, batch_size: int | None = None) -> RoundRequest:
    return RoundRequest(
        run_id="run-1",
        config_hash=config_hash(run),
        round=round_number,
        total_rounds=run.rounds,
        local_epochs=run.training.local_epochs,
        batch_size=batch_size or run.training.batch_size,
        privacy=run.privacy,
    )


def _site(cases_policy: PrivacyPolicy | None = None, role: Role = Role.TRAIN) -> SiteSettings:
    return SiteSettings(
        site=SiteInfo(name="hospital-a", role=role),
        data=DataSettings(path=Path("data.npz")),
        privacy=cases_policy or PrivacyPolicy(),
    )


def _run(**training: object) -> RunSettings:
    rounds = training.pop("rounds", 20)
    privacy = training.pop("privacy", {"target_epsilon": 8.0})
    return RunSettings.model_validate(
        {"name": "study", "rounds": rounds, "training": training, "privacy": privacy}
    )


# -- the plan is the training that follows ---------------------------------------------------


#: A DP recipe: virtual batches of 16 in micro-batches of 4 rows, 2 augmented copies per
#: example, EMA, SGD at its own rate.
RECIPE = (
    "recipe = { batch_size = 16, physical_batch_size = 4, augmentation_multiplicity = 2, "
    'ema_decay = 0.9, optimizer = "sgd", learning_rate = 0.5 }'
)


@pytest.mark.parametrize(("previous_rounds", "recipe"), [(0, ""), (1, ""), (1, RECIPE)])
def test_plan_equals_the_dp_training_that_follows(
    tmp_path: Path, previous_rounds: int, recipe: str
) -> None:
    """Plan through the site's own data set and ledger, then train every round of the
    study through the node's gate and Opacus: same sigma, q, steps and epsilon (also with
    virtual batches, augmentation multiplicity and EMA: the recipe's logical batch sets q)."""
    privacy = "target_epsilon = 6.0\n" + recipe
    run_path = _run_toml(tmp_path, rounds=2, epochs=2, batch=8, privacy=privacy)
    site_path = _site_toml(tmp_path, cases=40)
    run, site = load_run_settings(run_path), load_site_settings(site_path)
    dataset = SiteDataset.open(site.data.path, cache_dir=site.cache_dir)
    data = dataset.load(Task.SEGMENTATION, ("train",))
    path = ledger_path(site.ledger_dir, dataset.fingerprint)
    ledger = PrivacyLedger.open(path, dataset.fingerprint, site.site.name)
    for number in range(1, previous_rounds + 1):  # an earlier study's spend on this data set
        earlier = RoundRequest("run-0", "0" * 64, number, 3, 1, 10, run.privacy)
        spend = PrivacySpend(
            noise_multiplier=1.5,
            sample_rate=0.25,
            steps=4,
            delta=1e-5,
            epsilon=0.0,
            run_epsilon=0.0,
            accountant="rdp",
            max_grad_norm=1.0,
        )
        record_round(ledger, path, earlier, spend, len(data))

    plan = site_plan(run, site, run_source=str(run_path), site_source=str(site_path))
    assert plan.num_examples == len(data)
    assert plan.spent_before == pytest.approx(ledger.spent(1e-5, "rdp"), rel=1e-12)

    model = build_model(
        ModelSettings(architecture="unet", channels=(4, 8), strides=(2,), norm_groups=2)
    )
    entries = []
    for number in range(1, run.rounds + 1):
        request = _request(run, number)
        dp_round = plan_round(site.privacy, ledger, request, len(data))
        assert dp_round is not None
        assert dp_round.noise_multiplier == plan.noise_multiplier
        _, spend = train_local_dp(
            model,
            data,
            Task.SEGMENTATION,
            epochs=run.training.local_epochs,
            batch_size=run.training.batch_size,
            learning_rate=run.training.learning_rate,
            device=torch.device("cpu"),
            dp=dp_round,
        )
        assert spend.noise_multiplier == plan.noise_multiplier
        assert spend.sample_rate == plan.sample_rate
        assert spend.steps == plan.steps_per_round
        entries.append(record_round(ledger, path, request, spend, len(data)))

    assert sum(entry.steps for entry in entries) == plan.steps
    assert entries[-1].epsilon == pytest.approx(plan.spent_after, rel=1e-9)
    assert entries[-1].run_epsilon == pytest.approx(plan.study_epsilon, rel=1e-9)
    assert plan.study_epsilon <= 6.0 * 1.01  # the run's target, to Opacus' tolerance
    assert plan.budget_left == pytest.approx(50.0 - entries[-1].epsilon, rel=1e-9)
    expected_batch = len(data) * spend.sample_rate
    assert plan.noise_per_coordinate == pytest.approx(plan.noise_multiplier / expected_batch)
    assert plan.batch_size == (16 if recipe else 8)
    assert plan.sample_rate == 1.0 / math.ceil(len(data) / plan.batch_size)


def test_rounds_within_the_lifetime_limit_are_those_the_node_trains(tmp_path: Path) -> None:
    run = _run(batch_size=8, rounds=6, privacy={"noise_multiplier": 1.0})
    history = [(1.0, 0.25, 12)]
    full = plan_study(run, _site(PrivacyPolicy(max_epsilon=100.0)), 32, history)
    limit = epsilon_of([*history, (1.0, full.sample_rate, full.steps_per_round * 3)], 1e-5, "rdp")
    plan = plan_study(run, _site(PrivacyPolicy(max_epsilon=limit * 1.0001)), 32, history)
    assert full.rounds_within_limit == 6 and full.refusals == ()
    assert plan.rounds_within_limit == 3
    assert any("allows 3 of the study's 6 rounds" in reason for reason in plan.refusals)
    assert plan.budget_left < 0

    # The node's gate, round by round on a ledger that starts with the same history.
    policy = PrivacyPolicy(max_epsilon=limit * 1.0001)
    path = ledger_path(tmp_path, "cd" * 32)
    ledger = PrivacyLedger("cd" * 32, "hospital-a")
    record_round(
        ledger,
        path,
        RoundRequest("run-0", "0" * 64, 1, 1, 1, 8, run.privacy),
        PrivacySpend(
            noise_multiplier=1.0,
            sample_rate=0.25,
            steps=12,
            delta=1e-5,
            epsilon=0.0,
            run_epsilon=0.0,
            accountant="rdp",
            max_grad_norm=1.0,
        ),
        32,
    )
    for number in range(1, 4):
        dp_round = plan_round(policy, ledger, _request(run, number), 32)
        assert dp_round is not None
        spend = PrivacySpend(
            noise_multiplier=1.0,
            sample_rate=plan.sample_rate,
            steps=plan.steps_per_round,
            delta=1e-5,
            epsilon=0.0,
            run_epsilon=0.0,
            accountant="rdp",
            max_grad_norm=1.0,
        )
        record_round(ledger, path, _request(run, number), spend, 32)
    with pytest.raises(PrivacyRefusedError, match="over the site's limit"):
        plan_round(policy, ledger, _request(run, 4), 32)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "site", "cases", "field"),
    [
        (_run(batch_size=4), _site(role=Role.HOLDOUT), 38, "site.role"),
        (_run(privacy={"enabled": False}), _site(), 38, "run.privacy.enabled"),
        (_run(batch_size=64), _site(), 38, "run.training.batch_size"),
        (_run(batch_size=4), _site(PrivacyPolicy(delta=0.05)), 38, "privacy.delta"),
        (_run(batch_size=4), _site(), 0, "data"),
        (
            _run(batch_size=4, privacy={"target_epsilon": 1e-6}),
            _site(),
            38,
            "run.privacy.target_epsilon",
        ),
    ],
)
def test_planner_refuses_what_it_cannot_plan(
    run: RunSettings, site: SiteSettings, cases: int, field: str
) -> None:
    with pytest.raises(PlanError) as caught:
        plan_study(run, site, cases, run_source="study.toml", site_source="site.toml")
    message = str(caught.value)
    assert f": {field}:" in message
    assert message.startswith("study.toml" if field.startswith("run.") else "site.toml")


def test_the_policy_field_is_validated(tmp_path: Path) -> None:
    path = _site_toml(tmp_path, policy='refuse_if_unlikely_to_learn = "yes"')
    with pytest.raises(ConfigError, match=r"privacy\.refuse_if_unlikely_to_learn"):
        load_site_settings(path)
    path = _site_toml(tmp_path, policy="refuse_if_unlikely_to_learn = true")
    assert load_site_settings(path).privacy.refuse_if_unlikely_to_learn is True


# -- calibration and the node's refusal -----------------------------------------------------


def test_calibration_points_are_judged_as_they_turned_out() -> None:
    for point in CALIBRATION:
        expected = LearningOutlook.LIKELY if point.learned else LearningOutlook.UNLIKELY
        assert learning_outlook(point.noise_per_coordinate) is expected
    # The shipped hippocampus study (38 training volumes at site a) and the demo's sites.
    hippocampus = plan_study(
        load_run_settings(Path("configs/real/run-hippocampus.toml")), _site(), 38
    )
    assert hippocampus.noise_multiplier == pytest.approx(1.196, abs=1e-3)
    assert hippocampus.unlikely_to_learn
    assert "sigma*C/B = 0.315 at 38 cases: comparable studies did not learn" in (
        hippocampus.assessment
    )
    assert "warm start" in hippocampus.assessment
    from consortia.server.launch.demo import DemoOptions, demo_run_settings

    demo = plan_study(demo_run_settings(DemoOptions(), "demo"), _site(), 960)
    assert demo.outlook is LearningOutlook.LIKELY
    assert math.isclose(demo.noise_per_coordinate, 0.0123, abs_tol=5e-4)


def test_the_node_refuses_a_study_unlikely_to_learn_only_under_the_policy() -> None:
    run = load_run_settings(Path("configs/real/run-hippocampus.toml"))
    refusing = PrivacyPolicy(refuse_if_unlikely_to_learn=True)
    ledger = PrivacyLedger("ef" * 32, "hospital-a")
    with pytest.raises(PrivacyRefusedError, match="refuse_if_unlikely_to_learn") as caught:
        plan_round(refusing, ledger, _request(run, 1), 38)
    assert "comparable studies did not learn" in str(caught.value)
    assert plan_round(PrivacyPolicy(), ledger, _request(run, 1), 38) is not None
    # A study that the calibration says learns passes under the same policy.
    assert plan_round(refusing, ledger, _request(run, 1, batch_size=64), 960) is not None
    plan = plan_study(run, _site(refusing), 38)
    assert any("refuse_if_unlikely_to_learn" in reason for reason in plan.refusals)


# -- the commands ------------------------------------------------------------------------------


def test_cli_plan_shows_the_figures_and_the_warning(tmp_path: Path) -> None:
    run_path = _run_toml(tmp_path, rounds=20, batch=4, privacy="target_epsilon = 8.0")
    site_path = _site_toml(tmp_path, cases=38)
    app = build_app()
    args = ["privacy", "plan", str(run_path), "--site-config", str(site_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for text in (
        "noise multiplier sigma",
        "noise per coordinate sigma*C/B",
        "DP steps over the study",
        "200 (10 per round x 20 rounds)",
        "lifetime budget left after the study",
        "Warning:",
        "comparable studies did not learn",
    ):
        assert text in result.output

    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    run, site = load_run_settings(run_path), load_site_settings(site_path)
    expected = plan_study(run, site, 38)
    assert shown["noise_multiplier"] == expected.noise_multiplier
    assert shown["steps"] == 200 and shown["unlikely_to_learn"] is True
    assert shown["budget_left"] == pytest.approx(expected.budget_left)

    result = runner.invoke(app, ["privacy", "plan", str(run_path), "--cases", "960", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["num_examples"] == 960

    result = runner.invoke(app, ["privacy", "plan", str(run_path)])
    assert result.exit_code == 2 and "--site-config" in result.output

    holdout = _site_toml(tmp_path, role="holdout")
    result = runner.invoke(app, ["privacy", "plan", str(run_path), "--site-config", str(holdout)])
    assert isinstance(result.exception, PlanError)
    assert f"{holdout}: site.role:" in str(result.exception)


def test_approve_shows_the_plan_and_refuses_under_the_policy(tmp_path: Path) -> None:
    run_path = _run_toml(tmp_path, rounds=20, batch=4, privacy="target_epsilon = 8.0")
    app = build_app()
    site_path = _site_toml(tmp_path, cases=38)
    args = ["node", "approve", str(run_path), "--site-config", str(site_path), "--by", "it"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "noise per coordinate sigma*C/B" in result.output
    assert "comparable studies did not learn" in result.output
    assert "Approved study tiny-seg" in result.output
    store = ApprovalStore.for_site(load_site_settings(site_path))
    assert len(store.list()) == 1

    store.revoke(store.list()[0].config_hash)
    site_path = _site_toml(tmp_path, cases=38, policy="refuse_if_unlikely_to_learn = true")
    result = runner.invoke(app, args)
    assert isinstance(result.exception, UnlikelyToLearnError)
    message = str(result.exception)
    assert f"{site_path}: privacy.refuse_if_unlikely_to_learn" in message
    assert "comparable studies did not learn" in message
    assert store.list() == []

    # A study that can learn here is approved under the same policy.
    learnable = _run_toml(tmp_path, rounds=1, batch=19, privacy="target_epsilon = 8.0")
    result = runner.invoke(
        app, ["node", "approve", str(learnable), "--site-config", str(site_path)]
    )
    assert result.exit_code == 0, result.output
    assert len(store.list()) == 1
