"""A site's privacy ledger: every DP-SGD round ever run on one data set.

The node owns one ledger file per data set, named by the data set's fingerprint, in its
state folder. Each round appends an entry (run, round, noise multiplier, sample rate,
steps, delta, epsilon after the round, accountant); the file is rewritten atomically and
its entries are hash-chained from a start bound to the data set, so a crash never leaves
half a ledger and an edit, or a ledger relabelled to another data set, shows.
The accountant of the next round is restored from these entries: epsilon accumulates
across rounds, runs and restarts and is never reset. The auditor reads the same files.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, ValidationError

from consortia.common.config.privacy_settings import Accountant
from consortia.common.crypto.hash_chain import (
    HASH_FIELD,
    PREV_FIELD,
    chain_hash,
    genesis_for,
    verify_chain,
)
from consortia.common.errors import ConsortiaError
from consortia.common.files import exclusive_lock, write_json_atomic
from consortia.common.privacy.spend import PrivacySpend, spend_error

if TYPE_CHECKING:  # accounting loads Opacus and torch; run-folder readers run without them
    from consortia.common.privacy.accounting import HistoryEntry

__all__ = [
    "LEDGER_SCHEMA",
    "LedgerEntry",
    "LedgerError",
    "LedgerHead",
    "PrivacyLedger",
    "ledger_lock",
    "ledger_path",
]

LEDGER_SCHEMA = "consortia.privacy-ledger/1"


class LedgerError(ConsortiaError):
    """A ledger file is missing, unreadable, altered or belongs to another data set."""


class LedgerEntry(PrivacySpend):
    """One round of DP-SGD on the data set, as the ledger keeps it: the round's spend
    (`PrivacySpend`) with the run, round and example count. `config_hash` is the hash of
    the approved run config the round was trained under (the site's key for the run's
    privacy target; empty in entries written before it was recorded)."""

    run_id: str
    round: Annotated[int, Field(ge=0)]
    num_examples: Annotated[int, Field(ge=0)]
    recorded_at: str
    config_hash: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")] = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> LedgerEntry:
        """An entry as stored (its hash-chain fields and unknown keys are ignored);
        `LedgerError` names `where` and each field that is missing or malformed."""
        known = set(cls.model_fields)
        missing = known - set(data) - set(_OPTIONAL_FIELDS)
        if missing:
            raise LedgerError(f"{where}: missing field(s) {sorted(missing)}")
        try:
            return cls.model_validate({key: data[key] for key in known if key in data})
        except ValidationError as err:
            raise LedgerError(f"{where}: {spend_error(err)}") from None


# Fields that entries written by earlier versions lack, with the value they stand for.
_OPTIONAL_FIELDS: dict[str, Any] = {"config_hash": ""}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def ledger_path(ledger_dir: Path, dataset_fingerprint: str) -> Path:
    """The ledger file of a data set."""
    if not dataset_fingerprint.isalnum():
        raise ValueError("a data set fingerprint is a hex digest")
    return ledger_dir / f"{dataset_fingerprint}.json"


def ledger_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on a ledger from reading it to writing the next entry, so
    two runs training on the same data set at once cannot both spend the same budget."""
    return exclusive_lock(path)


@dataclass(frozen=True)
class LedgerHead:
    """Where a ledger stood: the hash of its last entry (the chain's start, bound to the
    data set, when it has none) and its entry count. It travels with every train reply;
    a ledger that later no longer holds a head the server recorded was cut or replaced."""

    sha256: str
    entries: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "entries": self.entries}

    @classmethod
    def from_dict(cls, data: object, where: str) -> LedgerHead:
        """A head as recorded (JSON); errors name `where` and the field."""
        if not isinstance(data, Mapping):
            raise LedgerError(f"{where}: a ledger head is an object, got {type(data).__name__}")
        sha256, entries = data.get("sha256"), data.get("entries")
        if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise LedgerError(f"{where}: 'sha256' must be a hex SHA-256, got {sha256!r}")
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 0:
            raise LedgerError(f"{where}: 'entries' must be a count >= 0, got {entries!r}")
        return cls(sha256, entries)


class PrivacyLedger:
    """The entries of one data set, with `state_dict`/`load_state_dict` that validate."""

    def __init__(self, dataset_fingerprint: str, site: str) -> None:
        self.dataset_fingerprint = dataset_fingerprint
        self.site = site
        self._records: list[dict[str, Any]] = []

    @property
    def entries(self) -> list[LedgerEntry]:
        return [
            LedgerEntry.from_dict(record, f"entry {i}") for i, record in enumerate(self._records)
        ]

    def history(self, run_id: str | None = None) -> list[HistoryEntry]:
        """The accountant history of the whole data set, or of one run."""
        return [
            entry.history_entry()
            for entry in self.entries
            if run_id is None or entry.run_id == run_id
        ]

    def config_history(self, config_hash: str, run_id: str) -> list[HistoryEntry]:
        """The accountant history of every round trained under the approved run config
        `config_hash`, in any run, and of every round of run `run_id` (entries written
        before the config hash was recorded count by their run): what a run's privacy
        target bounds. The server names runs; only the config hash is the site's own."""
        if not _HEX64.fullmatch(config_hash):
            raise LedgerError("an approved config hash is a hex SHA-256")
        return [
            entry.history_entry()
            for entry in self.entries
            if entry.config_hash == config_hash or entry.run_id == run_id
        ]

    @property
    def head(self) -> LedgerHead:
        """The ledger's head now (the hash of its last entry, its entry count)."""
        return self.heads()[-1]

    def heads(self) -> list[LedgerHead]:
        """Every head the ledger has had, from empty (the chain's start) to now: a head
        recorded earlier must be one of them, unless the ledger was cut or replaced."""
        heads = [LedgerHead(genesis_for(self.dataset_fingerprint), 0)]
        heads += [
            LedgerHead(str(record[HASH_FIELD]), index + 1)
            for index, record in enumerate(self._records)
        ]
        return heads

    def spent(self, delta: float, accountant: Accountant) -> float:
        """Epsilon of everything recorded so far, recomputed from the history."""
        from consortia.common.privacy.accounting import epsilon_of  # Opacus, on use

        return epsilon_of(self.history(), delta, accountant)

    def append(self, entry: LedgerEntry) -> None:
        previous = (
            self._records[-1][HASH_FIELD]
            if self._records
            else genesis_for(self.dataset_fingerprint)
        )
        record: dict[str, Any] = entry.model_dump() | {PREV_FIELD: previous}
        record[HASH_FIELD] = chain_hash(record)
        self._records.append(record)

    # -- persistence -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": LEDGER_SCHEMA,
            "dataset_fingerprint": self.dataset_fingerprint,
            "site": self.site,
            "entries": [dict(record) for record in self._records],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the entries with `state`'s after checking schema, data set, fields and
        the hash chain; nothing changes if any check fails."""
        if state.get("schema") != LEDGER_SCHEMA:
            raise LedgerError(f"unknown ledger schema {state.get('schema')!r}")
        if state.get("dataset_fingerprint") != self.dataset_fingerprint:
            raise LedgerError("the ledger belongs to another data set")
        records = state.get("entries")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise LedgerError("entries must be a list of objects")
        problems = verify_chain(records, genesis_for(self.dataset_fingerprint))
        if problems:
            raise LedgerError("hash chain broken: " + "; ".join(problems))
        for index, record in enumerate(records):
            LedgerEntry.from_dict(record, f"entry {index}")
        self._records = [dict(record) for record in records]

    @classmethod
    def load(cls, path: Path, *, dataset_fingerprint: str | None = None) -> PrivacyLedger:
        """Read a ledger file; errors name the file."""
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LedgerError(f"{path}: no such ledger") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LedgerError(f"{path}: unreadable ledger: {err}") from None
        if not isinstance(state, dict):
            raise LedgerError(f"{path}: not a ledger")
        fingerprint = dataset_fingerprint or str(state.get("dataset_fingerprint", ""))
        ledger = cls(fingerprint, str(state.get("site", "")))
        try:
            ledger.load_state_dict(state)
        except LedgerError as err:
            raise LedgerError(f"{path}: {err}") from None
        return ledger

    @classmethod
    def open(cls, path: Path, dataset_fingerprint: str, site: str) -> PrivacyLedger:
        """The ledger at `path`, or a new empty one if the data set never trained."""
        if not path.exists():
            return cls(dataset_fingerprint, site)
        return cls.load(path, dataset_fingerprint=dataset_fingerprint)

    def save(self, path: Path) -> None:
        """Atomic rewrite: readers see the previous or the new ledger, never a mix."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.state_dict())

    def run_entries(self, run_id: str) -> Sequence[LedgerEntry]:
        return [entry for entry in self.entries if entry.run_id == run_id]
