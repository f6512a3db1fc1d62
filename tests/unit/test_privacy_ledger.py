"""The site's privacy ledger file: round trip, tamper evidence, atomic writes, locking."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from consortia.common.privacy.accounting import epsilon_of
from consortia.common.privacy.ledger import (
    LEDGER_SCHEMA,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    ledger_lock,
    ledger_path,
)

FINGERPRINT = "5e" * 32
OTHER = "0f" * 32
DELTA = 1e-5
ENTRY = (2.0, 0.05, 40)  # noise multiplier, sample rate, steps of every round below


def _ledger(rounds: int = 4) -> PrivacyLedger:
    ledger = PrivacyLedger(FINGERPRINT, "site-a")
    for round_ in range(1, rounds + 1):
        run_id = "run-1" if round_ <= 2 else "run-2"
        history = [*ledger.history(), ENTRY]
        ledger.append(
            LedgerEntry(
                run_id=run_id,
                round=round_,
                noise_multiplier=ENTRY[0],
                sample_rate=ENTRY[1],
                steps=ENTRY[2],
                delta=DELTA,
                epsilon=epsilon_of(history, DELTA, "rdp"),
                run_epsilon=epsilon_of([*ledger.history(run_id), ENTRY], DELTA, "rdp"),
                accountant="rdp",
                max_grad_norm=1.0,
                num_examples=320,
                recorded_at=f"2026-03-01T10:0{round_}:00Z",
            )
        )
    return ledger


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = ledger_path(tmp_path_factory.mktemp("node") / "privacy", FINGERPRINT)
    _ledger().save(path)
    return path


@pytest.fixture()
def path(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / saved.name
    copy.write_bytes(saved.read_bytes())
    return copy


def _edit(path: Path, change: Callable[[list[dict[str, Any]]], object]) -> None:
    state = json.loads(path.read_text())
    change(state["entries"])
    path.write_text(json.dumps(state, indent=2))


def test_append_save_load_round_trip(path: Path) -> None:
    original = _ledger()
    loaded = PrivacyLedger.load(path)
    assert loaded.entries == original.entries
    assert loaded.state_dict() == original.state_dict()
    assert (loaded.dataset_fingerprint, loaded.site) == (FINGERPRINT, "site-a")
    assert json.loads(path.read_text())["schema"] == LEDGER_SCHEMA
    assert path.name == f"{FINGERPRINT}.json"
    # epsilon accumulates across both runs; run_epsilon restarts with run-2
    assert [e.run_id for e in loaded.entries] == ["run-1", "run-1", "run-2", "run-2"]
    assert loaded.entries[3].epsilon > loaded.entries[2].epsilon > loaded.entries[1].epsilon
    assert loaded.entries[2].run_epsilon == pytest.approx(loaded.entries[0].epsilon)
    assert loaded.spent(DELTA, "rdp") == pytest.approx(loaded.entries[-1].epsilon)
    assert loaded.history("run-2") == [ENTRY, ENTRY]
    assert [e.round for e in loaded.run_entries("run-1")] == [1, 2]
    # PrivacyLedger.open of a data set that never trained is empty, of this one is the file
    assert PrivacyLedger.open(path.with_name(f"{OTHER}.json"), OTHER, "site-a").entries == []
    assert PrivacyLedger.open(path, FINGERPRINT, "site-a").entries == original.entries


def test_lowered_epsilon_is_detected(path: Path) -> None:
    _edit(path, lambda entries: entries[1].update(epsilon=entries[1]["epsilon"] / 2))
    with pytest.raises(LedgerError, match=r"entry 1: content does not match") as caught:
        PrivacyLedger.load(path)
    assert str(path) in str(caught.value)


def test_deleted_middle_entry_is_detected(path: Path) -> None:
    _edit(path, lambda entries: entries.pop(1))
    with pytest.raises(LedgerError, match=r"hash chain broken: entry 1: prev_hash") as caught:
        PrivacyLedger.load(path)
    assert str(path) in str(caught.value)


def test_reordered_entries_are_detected(path: Path) -> None:
    _edit(path, lambda entries: entries.reverse())
    with pytest.raises(LedgerError, match="hash chain broken") as caught:
        PrivacyLedger.load(path)
    assert str(path) in str(caught.value)


def test_entry_rewritten_with_a_fresh_hash_still_breaks_the_next_link(path: Path) -> None:
    """Re-hashing the edited entry alone is not enough: its successor names the old hash."""
    from consortia.common.crypto.hash_chain import chain_hash

    def forge(entries: list[dict[str, Any]]) -> None:
        entries[1]["epsilon"] = 0.01
        entries[1]["hash"] = chain_hash(entries[1])

    _edit(path, forge)
    with pytest.raises(LedgerError, match=r"entry 2: prev_hash does not match"):
        PrivacyLedger.load(path)


def test_ledger_of_another_data_set_is_refused(path: Path) -> None:
    with pytest.raises(LedgerError, match="another data set") as caught:
        PrivacyLedger.load(path, dataset_fingerprint=OTHER)
    assert str(path) in str(caught.value)
    with pytest.raises(LedgerError, match="another data set"):
        PrivacyLedger.open(path, OTHER, "site-a")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{broken", "unreadable ledger"),
        ("[1, 2]", "not a ledger"),
        (json.dumps({"schema": "other/1"}), "unknown ledger schema"),
    ],
)
def test_unreadable_ledgers_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / f"{FINGERPRINT}.json"
    path.write_text(text)
    with pytest.raises(LedgerError, match=problem) as caught:
        PrivacyLedger.load(path)
    assert str(path) in str(caught.value)
    with pytest.raises(LedgerError, match="no such ledger"):
        PrivacyLedger.load(tmp_path / "missing.json")


def test_entries_with_bad_values_are_refused() -> None:
    good = _ledger(1).entries[0].model_dump()
    for change in (
        {"steps": -40},
        {"steps": 4.5},
        {"round": True},
        {"epsilon": -1.0},
        {"sample_rate": 1.5},
        {"accountant": "gdp"},
    ):
        with pytest.raises(LedgerError, match="entry 0"):
            LedgerEntry.from_dict(good | change, "entry 0")
    with pytest.raises(LedgerError, match="missing field"):
        LedgerEntry.from_dict({k: v for k, v in good.items() if k != "delta"}, "entry 0")


def test_save_is_atomic(path: Path) -> None:
    before = path.read_bytes()
    ledger = PrivacyLedger.load(path)
    ledger.site = cast(Any, {"not", "json"})  # a set: not JSON-serialisable
    with pytest.raises(TypeError):
        ledger.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    ledger.site = "site-a"
    ledger.append(_ledger(5).entries[4])
    ledger.save(path)
    assert len(PrivacyLedger.load(path).entries) == 5


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file size limits")
def test_save_failing_in_mid_write_keeps_the_old_file(path: Path) -> None:
    """The disk fills up (here: a file size limit) while the new ledger is written."""
    import resource

    before = path.read_bytes()
    ledger = PrivacyLedger.load(path)
    ledger.append(_ledger(5).entries[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, hard))
    try:
        with pytest.raises(OSError):
            ledger.save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


_TRY_LOCK = textwrap.dedent(
    """
    import fcntl, sys
    with open(sys.argv[1], "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(3)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_ledger_lock_excludes_another_process(path: Path) -> None:
    lock_file = path.with_suffix(".lock")

    def other_process_gets_the_lock() -> bool:
        done = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock_file)], timeout=60)
        assert done.returncode in (0, 3)
        return done.returncode == 0

    with ledger_lock(path):
        assert lock_file.exists()
        assert not other_process_gets_the_lock()
    assert other_process_gets_the_lock()


def test_ledger_relabelled_to_another_data_set_is_detected(path: Path) -> None:
    """The chain starts from a hash of the data set's fingerprint: rewriting the
    fingerprint field (to pass one data set's spending off as another's) breaks it."""
    state = json.loads(path.read_text())
    state["dataset_fingerprint"] = "7f" * 32
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError, match="chain's start"):
        PrivacyLedger.load(path)
