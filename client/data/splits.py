"""Deterministic per-patient splits: all cases of one patient land in one split.

The `patient-hash` rule hashes the salt and the patient id with SHA-256 and maps the
result to [0, 1); the split fractions cut that interval into train, val and test. The
same patient, salt and fractions give the same split on every machine.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

from consortia.client.data.manifest import SplitRule

__all__ = ["SPLITS", "hash_fraction", "patient_split", "split_conflicts"]

SPLITS = ("train", "val", "test")


def hash_fraction(text: str, salt: str = "") -> float:
    """A number in [0, 1) derived from `salt` and `text` (uniform over many texts)."""
    digest = hashlib.sha256(f"{salt}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def patient_split(patient: str, rule: SplitRule) -> str:
    """The split that the `patient-hash` rule gives to every case of `patient`."""
    value = hash_fraction(patient, rule.salt)
    if value < rule.train:
        return "train"
    if value < rule.train + rule.val:
        return "val"
    return "test"


def split_conflicts(assignments: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    """Patients whose cases are in more than one split, from (patient, split) pairs;
    maps each such patient to its splits in SPLITS order."""
    seen: dict[str, set[str]] = defaultdict(set)
    for patient, split in assignments:
        seen[patient].add(split)
    return {
        patient: tuple(name for name in SPLITS if name in splits)
        for patient, splits in seen.items()
        if len(splits) > 1
    }
