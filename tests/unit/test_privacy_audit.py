"""`consortia audit privacy`: a run folder and the sites' ledgers, written with our own
ledger and accountant, audit clean; each kind of tampering or loss is flagged."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from consortia.common.privacy.accounting import epsilon_of, poisson_plan
from consortia.common.privacy.ledger import LedgerEntry, PrivacyLedger, ledger_path
from consortia.server.audit.cli import audit_app
from consortia.server.audit.privacy_audit import PrivacyAudit, audit_privacy
from consortia.server.audit.privacy_recompute import Recomputer

RUN = "study-20260301-120000"
PREVIOUS_RUN = "study-20260201-090000"
DELTA = 1e-5
FP_A = "a1" * 32
FP_B = "b2" * 32
FP_OTHER = "c3" * 32


def _spend(
    ledger: PrivacyLedger, run_id: str, round_: int, sigma: float, q: float, steps: int
) -> LedgerEntry:
    """One round as the node records it: epsilon from our (Opacus) accountant."""
    entry_history = (sigma, q, steps)
    entry = LedgerEntry(
        run_id=run_id,
        round=round_,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=DELTA,
        epsilon=epsilon_of([*ledger.history(), entry_history], DELTA, "rdp"),
        run_epsilon=epsilon_of([*ledger.history(run_id), entry_history], DELTA, "rdp"),
        accountant="rdp",
        max_grad_norm=1.0,
        num_examples=320,
        recorded_at=f"2026-03-01T12:0{round_}:00Z",
    )
    ledger.append(entry)
    return entry


def _results(ledgers: dict[str, PrivacyLedger]) -> dict[str, Any]:
    """results.json as the server writes it, from the entries the sites sent."""
    rounds: list[dict[str, Any]] = [{"round": 0}]
    for round_ in (1, 2, 3):
        spent = {
            site: entry.model_dump(exclude={"run_id", "round", "recorded_at", "config_hash"})
            for site, ledger in ledgers.items()
            for entry in ledger.run_entries(RUN)
            if entry.round == round_
        }
        rounds.append({"round": round_, "participants": sorted(spent), "privacy": spent})
    before = {"site-a": 0.0, "site-b": ledgers["site-b"].entries[1].epsilon}
    return {
        "schema": "consortia.results/1",
        "run_name": RUN,
        "status": "completed",
        "privacy": {
            "sample_level": {
                "enabled": True,
                "target_epsilon": 8.0,
                "noise_multiplier": None,
                "max_grad_norm": 1.0,
                "accountant": "rdp",
            },
            "central": {"enabled": False, "noise_multiplier": 1.0, "clipping_norm": 10.0},
            "sites": {
                site: {
                    "dataset_fingerprint": ledger.dataset_fingerprint,
                    "max_epsilon": 10.0,
                    "delta": DELTA,
                    "epsilon_before_run": before[site],
                    "excluded": None,
                }
                for site, ledger in ledgers.items()
            },
        },
        "sites": [
            {"name": "site-a", "role": "train", "data_fingerprint": FP_A},
            {"name": "site-b", "role": "train", "data_fingerprint": FP_B},
            {"name": "site-c", "role": "holdout", "data_fingerprint": FP_OTHER},
        ],
        "rounds": rounds,
    }


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 sites x 3 rounds; site-b's ledger also holds 2 rounds of an earlier run."""
    root = tmp_path_factory.mktemp("audit")
    plan = poisson_plan(num_examples=320, batch_size=16)  # q = 0.05, 20 steps per epoch
    site_a = PrivacyLedger(FP_A, "site-a")
    site_b = PrivacyLedger(FP_B, "site-b")
    for round_ in (1, 2):
        _spend(site_b, PREVIOUS_RUN, round_, 1.1, 0.02, 100)
    for round_ in (1, 2, 3):
        _spend(site_a, RUN, round_, 1.5, plan.sample_rate, plan.steps(2))
        _spend(site_b, RUN, round_, 2.0, plan.sample_rate, plan.steps(2))
    (root / "run").mkdir()
    _write(root / "run", _results({"site-a": site_a, "site-b": site_b}))
    site_a.save(ledger_path(root / "node-a" / "privacy", FP_A))
    site_b.save(ledger_path(root / "node-b" / "privacy", FP_B))
    return root


@pytest.fixture()
def case(original: Path, tmp_path: Path) -> Path:
    shutil.copytree(original, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="module")
def recomputer() -> Recomputer:
    return Recomputer()  # shared: its cache keeps the whole file fast


def _write(run_dir: Path, results: dict[str, Any]) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))


def _read(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def _ledgers(root: Path) -> list[Path]:
    return [
        ledger_path(root / "node-a" / "privacy", FP_A),
        ledger_path(root / "node-b" / "privacy", FP_B),
    ]


def _audit(root: Path, recomputer: Recomputer, ledgers: list[Path] | None = None) -> PrivacyAudit:
    return audit_privacy(
        root / "run", _ledgers(root) if ledgers is None else ledgers, recomputer=recomputer
    )


def _kinds(audit: PrivacyAudit) -> set[tuple[str, str | None, int | None]]:
    return {(flag.kind, flag.site, flag.round) for flag in audit.flags}


def _cli(*args: str) -> Any:
    root = typer.Typer()
    root.add_typer(audit_app, name="audit")
    return CliRunner().invoke(root, ["audit", "privacy", *args])


def test_records_written_by_our_accountant_audit_clean(case: Path, recomputer: Recomputer) -> None:
    audit = _audit(case, recomputer)
    assert audit.flags == []
    assert [site.name for site in audit.sites] == ["site-a", "site-b"]
    site_a, site_b = audit.sites
    assert [row.round for row in site_a.rounds] == [1, 2, 3]
    assert all(row.source == "server" for row in site_a.rounds + site_b.rounds)
    assert site_a.status == site_b.status == "ok"
    # site-b's lifetime includes the earlier run; its run epsilon does not
    assert site_b.epsilon is not None and site_b.run_epsilon is not None
    assert site_b.epsilon > site_b.run_epsilon > 0
    assert site_a.epsilon == pytest.approx(site_a.run_epsilon)
    for row in site_a.rounds + site_b.rounds:
        assert row.run_recomputed is not None and row.lifetime_recomputed is not None
        assert row.ledger_epsilon == row.reported.epsilon
        assert row.reported.run_epsilon == pytest.approx(row.run_recomputed.rdp, rel=0.01)
        assert row.reported.epsilon == pytest.approx(row.lifetime_recomputed.rdp, rel=0.01)
        assert row.lifetime_recomputed.pld < row.reported.epsilon  # RDP: the looser bound
    ledger_b = next(ledger for ledger in audit.ledgers if ledger.site == "site-b")
    assert [entry.run_id for entry in ledger_b.entries] == [PREVIOUS_RUN] * 2 + [RUN] * 3


def test_changed_noise_multiplier_at_the_server_is_a_mismatch(
    case: Path, recomputer: Recomputer
) -> None:
    results = _read(case / "run")
    results["rounds"][2]["privacy"]["site-a"]["noise_multiplier"] = 1.6
    _write(case / "run", results)
    audit = _audit(case, recomputer)
    assert ("mismatch", "site-a", 2) in _kinds(audit)
    message = next(flag.message for flag in audit.flags if flag.kind == "mismatch")
    assert "noise_multiplier 1.6 (server) vs 1.5 (ledger)" in message
    assert audit.sites[0].status == "flagged"


def test_site_over_its_limit_is_flagged(case: Path, recomputer: Recomputer) -> None:
    results = _read(case / "run")
    lifetime_b = results["rounds"][2]["privacy"]["site-b"]["epsilon"]
    results["privacy"]["sites"]["site-b"]["max_epsilon"] = lifetime_b - 0.01
    _write(case / "run", results)
    audit = _audit(case, recomputer)
    assert _kinds(audit) == {("over_limit", "site-b", 2)}
    assert audit.sites[1].status == "over limit"


def test_edited_ledger_breaks_the_chain_and_is_flagged(case: Path, recomputer: Recomputer) -> None:
    path = _ledgers(case)[1]
    state = json.loads(path.read_text())
    state["entries"][1]["epsilon"] /= 2  # an earlier run's spending, lowered
    path.write_text(json.dumps(state))
    audit = _audit(case, recomputer)
    assert _kinds(audit) == {("ledger_invalid", "site-b", None)}
    assert str(path) in audit.flags[0].message and "hash chain broken" in audit.flags[0].message
    assert audit.sites[1].status == "flagged" and audit.sites[1].ledger is None


def test_round_without_ledger_entry_and_entry_without_server_record(
    case: Path, recomputer: Recomputer
) -> None:
    # site-a's node lost its third entry (e.g. restored from an old backup)
    ledger = PrivacyLedger.load(_ledgers(case)[0])
    shortened = PrivacyLedger(FP_A, "site-a")
    for entry in ledger.entries[:2]:
        shortened.append(entry)
    shortened.save(_ledgers(case)[0])
    # the server never got site-b's third update (lost reply)
    results = _read(case / "run")
    del results["rounds"][3]["privacy"]["site-b"]
    results["rounds"][3]["participants"] = ["site-a"]
    _write(case / "run", results)
    audit = _audit(case, recomputer)
    assert _kinds(audit) == {
        ("missing_ledger_entry", "site-a", 3),
        ("unreported_ledger_entry", "site-b", 3),
    }
    last_b = audit.sites[1].rounds[-1]
    assert (last_b.round, last_b.source) == (3, "ledger")


def test_under_reported_epsilon_is_caught_by_recomputation(
    tmp_path: Path, original: Path, recomputer: Recomputer
) -> None:
    """A node that writes a consistent but too small epsilon: chain and cross-checks
    agree, only the independent recomputation finds it."""
    shutil.copytree(original, tmp_path, dirs_exist_ok=True)
    honest = PrivacyLedger.load(_ledgers(tmp_path)[0])
    lying = PrivacyLedger(FP_A, "site-a")
    for entry in honest.entries:
        low = entry.epsilon * 0.5
        lying.append(entry.model_copy(update={"epsilon": low, "run_epsilon": low}))
    lying.save(_ledgers(tmp_path)[0])
    results = _read(tmp_path / "run")
    for round_, entry in zip((1, 2, 3), lying.entries, strict=True):
        record = results["rounds"][round_]["privacy"]["site-a"]
        record["epsilon"] = record["run_epsilon"] = entry.epsilon
    _write(tmp_path / "run", results)
    audit = _audit(tmp_path, recomputer)
    kinds = _kinds(audit)
    assert {("under_reported", "site-a", r) for r in (1, 2, 3)} <= kinds
    assert {kind for kind, _, _ in kinds} == {"under_reported"}


def test_over_reported_rdp_epsilon_differs_from_dp_accounting(
    case: Path, recomputer: Recomputer
) -> None:
    results = _read(case / "run")
    results["rounds"][1]["privacy"]["site-a"]["run_epsilon"] *= 1.05
    _write(case / "run", results)
    kinds = _kinds(_audit(case, recomputer, ledgers=[]))
    assert ("rdp_mismatch", "site-a", 1) in kinds


def test_ledger_of_another_data_set_and_unreadable_ledger(
    case: Path, recomputer: Recomputer
) -> None:
    other = PrivacyLedger(FP_OTHER, "site-c")
    _spend(other, RUN, 1, 2.0, 0.05, 40)
    other.save(case / "other.json")
    broken = case / "broken.json"
    broken.write_text("{not json")
    audit = _audit(case, recomputer, ledgers=[*_ledgers(case), case / "other.json", broken])
    assert _kinds(audit) == {("ledger_unmatched", None, None), ("ledger_invalid", None, None)}
    assert {ledger.status for ledger in audit.ledgers} == {"ok", "unmatched", "invalid"}


def test_without_ledgers_the_server_records_alone_audit_clean(
    case: Path, recomputer: Recomputer
) -> None:
    audit = _audit(case, recomputer, ledgers=[])
    assert audit.clean
    assert all(row.lifetime_recomputed is None for site in audit.sites for row in site.rounds)


def test_retried_round_spends_twice_and_is_flagged(case: Path, recomputer: Recomputer) -> None:
    """Round 2 at site-a ran twice (the first reply was lost); the server kept the retry."""
    plan = poisson_plan(num_examples=320, batch_size=16)
    retried = PrivacyLedger(FP_A, "site-a")
    for round_ in (1, 2, 2, 3):
        _spend(retried, RUN, round_, 1.5, plan.sample_rate, plan.steps(2))
    retried.save(_ledgers(case)[0])
    results = _read(case / "run")
    for entry in retried.entries[2:]:
        record = results["rounds"][entry.round]["privacy"]["site-a"]
        record["epsilon"], record["run_epsilon"] = entry.epsilon, entry.run_epsilon
    _write(case / "run", results)
    kinds = _kinds(_audit(case, recomputer))
    assert ("ledger_repeated_round", "site-a", 2) in kinds
    # the server's records explain only one attempt: its run epsilon looks too high
    assert ("rdp_mismatch", "site-a", 2) in kinds
    assert not any(kind == "mismatch" for kind, _, _ in kinds)


def test_training_site_without_privacy_record_and_dp_disabled(
    case: Path, recomputer: Recomputer
) -> None:
    results = _read(case / "run")
    del results["rounds"][1]["privacy"]["site-b"]  # site-b still listed as participant
    _write(case / "run", results)
    assert ("missing_server_record", "site-b", 1) in _kinds(_audit(case, recomputer, []))

    results["privacy"]["sample_level"]["enabled"] = False
    for entry in results["rounds"]:
        entry.pop("privacy", None)
    results["privacy"]["sites"]["site-b"]["excluded"] = "over its privacy limit"
    _write(case / "run", results)
    audit = _audit(case, recomputer, [])
    assert _kinds(audit) == {("dp_disabled", None, None)}
    assert [site.status for site in audit.sites] == ["ok", "excluded: over its privacy limit"]


def test_cli_exit_codes_and_json(case: Path, recomputer: Recomputer) -> None:
    ledger_args = [arg for path in _ledgers(case) for arg in ("--ledger", str(path))]
    clean = _cli(str(case / "run"), *ledger_args)
    assert clean.exit_code == 0, clean.output
    assert "Nothing flagged" in clean.output and "site-b" in clean.output

    results = _read(case / "run")
    results["privacy"]["sites"]["site-a"]["max_epsilon"] = 0.5
    _write(case / "run", results)
    flagged = _cli(str(case / "run"), *ledger_args, "--json")
    assert flagged.exit_code == 1, flagged.output
    document = json.loads(flagged.output)
    assert document["clean"] is False
    assert [flag["kind"] for flag in document["flags"]] == ["over_limit"]
    site_a = document["sites"][0]
    assert site_a["name"] == "site-a" and len(site_a["rounds"]) == 3
    first = site_a["rounds"][0]
    assert set(first["run_recomputed"]) == {"rdp", "pld", "rdp_order"}
    assert first["reported"]["noise_multiplier"] == 1.5 and first["reported"]["steps"] == 40

    results = copy.deepcopy(results)
    results["rounds"][1]["privacy"]["site-a"]["steps"] = "20"
    _write(case / "run", results)
    bad = _cli(str(case / "run"))
    assert bad.exit_code == 2
    assert "results.json" in bad.output and "rounds[1].privacy.site-a.steps" in bad.output
    assert _cli(str(case / "missing")).exit_code == 2


def test_results_without_privacy_section_is_unusable(case: Path, recomputer: Recomputer) -> None:
    from consortia.common.errors import ConsortiaError

    results = _read(case / "run")
    del results["privacy"]
    _write(case / "run", results)
    with pytest.raises(ConsortiaError, match=r"results\.json: privacy: missing"):
        _audit(case, recomputer)


def test_sites_without_a_ledger_are_named_and_strict_fails_on_them(case: Path) -> None:
    """Issue 21: with no ledgers the audit used to end 'Nothing flagged.', exit 0, though
    no site's lifetime total was checked. Now it names the unchecked sites, and --strict
    fails until every training site's ledger is given."""
    lenient = _cli(str(case / "run"))
    assert lenient.exit_code == 0, lenient.output
    assert "Not checked against a ledger" in lenient.output
    assert "site-a, site-b" in lenient.output
    strict = _cli(str(case / "run"), "--strict", "--json")
    assert strict.exit_code == 1, strict.output
    assert json.loads(strict.output)["sites_without_ledger"] == ["site-a", "site-b"]
    one = _cli(str(case / "run"), "--strict", "--ledger", str(_ledgers(case)[0]))
    assert one.exit_code == 1 and "site-b" in one.output
    every = [arg for path in _ledgers(case) for arg in ("--ledger", str(path))]
    assert _cli(str(case / "run"), "--strict", *every).exit_code == 0
