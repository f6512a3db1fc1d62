"""What `consortia data check` reports: one result per case and a summary.

Everything here is plain data that turns into JSON. Results stay at the site: they carry
local file paths, but never DICOM tag values (PHI findings are counted by attribute).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePath
from typing import Any

from consortia.client.data.dicom.phi import PhiFinding
from consortia.client.data.reader import CaseData, intensity_stats
from consortia.client.data.splits import SPLITS

__all__ = [
    "CaseResult",
    "CheckReport",
    "Summary",
    "failed_result",
    "passed_result",
    "phi_key",
    "shown_problem",
]


@dataclass(frozen=True)
class CaseResult:
    """One case: OK, or the problem and the file it is about, plus what was read."""

    id: str
    split: str | None
    ok: bool
    problem: str | None = None
    file: str | None = None
    labels: tuple[int, ...] = ()
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    channels: int | None = None
    modality: str | None = None
    manufacturer: str | None = None
    intensity: tuple[float, float, float, float] | None = None  # min, max, mean, std
    voxels: int = 0
    files: int = 0
    phi_findings: int = 0


def passed_result(case_id: str, split: str | None, data: CaseData) -> CaseResult:
    """The result of a case that was read and prepared."""
    volume = data.volume
    return CaseResult(
        id=case_id,
        split=split,
        ok=True,
        labels=data.label_values,
        shape=volume.spatial_shape,
        spacing=tuple(round(float(s), 4) for s in volume.spacing),
        channels=int(volume.array.shape[0]),
        modality=volume.modality,
        manufacturer=volume.manufacturer,
        intensity=intensity_stats(volume.array),
        voxels=int(volume.array.size),
        files=data.files,
    )


def failed_result(case_id: str, split: str | None, file: str, problem: str) -> CaseResult:
    """The result of a case that is left out."""
    return CaseResult(id=case_id, split=split, ok=False, problem=problem, file=file)


def shown_problem(result: CaseResult) -> str | None:
    """What `data check` shows against a case: its problem, or, for a case read without
    one that holds identifying attributes, that it is not OK for that reason (the node
    does not train on it); None for a case that is OK."""
    if not result.ok:
        return result.problem
    if not result.phi_findings:
        return None
    return (
        f"{result.phi_findings} identifying DICOM attribute(s) (PHI): register a "
        "de-identified copy (`consortia data deidentify`)"
    )


def phi_key(finding: PhiFinding) -> str:
    """Where an identifier was found, with sequence item numbers folded together."""
    return re.sub(r"\[\d+\]", "[*]", finding.location)


def _ranges(values: Iterable[tuple[float, ...]]) -> tuple[list[float], list[float]] | None:
    items = [v for v in values]
    if not items or len({len(v) for v in items}) != 1:
        return None
    return [min(col) for col in zip(*items, strict=True)], [
        max(col) for col in zip(*items, strict=True)
    ]


@dataclass(frozen=True)
class Summary:
    """Counts and ranges over the cases that passed (and how many did not)."""

    cases: int
    passed: int
    failed: int
    per_split: dict[str, int]
    per_label: dict[str, dict[str, int]]
    shape_range: tuple[list[float], list[float]] | None
    spacing_range: tuple[list[float], list[float]] | None
    intensity: dict[str, float] | None
    channels: dict[str, int]
    modalities: dict[str, int]
    manufacturers: dict[str, int]
    phi_files: int
    phi: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, results: Sequence[CaseResult], phi: Mapping[str, int], label_names: Mapping[int, str]
    ) -> Summary:
        """Summarise case results; `phi` counts findings per location."""
        passed = [r for r in results if r.ok]
        per_split = Counter(r.split or "-" for r in passed)
        per_label: dict[str, Counter[str]] = {}
        for r in passed:
            counter = per_label.setdefault(r.split or "-", Counter())
            counter.update(label_names.get(v, str(v)) for v in r.labels)
        return cls(
            cases=len(results),
            passed=len(passed),
            failed=len(results) - len(passed),
            per_split={s: per_split[s] for s in (*SPLITS, "-") if per_split[s]},
            per_label={
                s: dict(sorted(per_label[s].items())) for s in (*SPLITS, "-") if s in per_label
            },
            shape_range=_ranges(tuple(float(n) for n in r.shape) for r in passed if r.shape),
            spacing_range=_ranges(r.spacing for r in passed if r.spacing),
            intensity=_pooled_intensity(passed),
            channels=dict(Counter(str(r.channels) for r in passed if r.channels)),
            modalities=dict(Counter(r.modality or "unknown" for r in passed)),
            manufacturers=dict(Counter(r.manufacturer for r in passed if r.manufacturer)),
            phi_files=sum(1 for r in results if r.phi_findings),
            phi=dict(sorted(phi.items())),
        )


def _pooled_intensity(passed: Sequence[CaseResult]) -> dict[str, float] | None:
    stats = [(r.intensity, r.voxels) for r in passed if r.intensity is not None and r.voxels]
    if not stats:
        return None
    total = sum(n for _, n in stats)
    mean = sum(s[2] * n for s, n in stats) / total
    second = sum((s[3] ** 2 + s[2] ** 2) * n for s, n in stats) / total
    return {
        "min": min(s[0] for s, _ in stats),
        "max": max(s[1] for s, _ in stats),
        "mean": mean,
        "std": max(second - mean**2, 0.0) ** 0.5,
    }


@dataclass(frozen=True)
class CheckReport:
    """The whole check of a data set (a manifest, a legacy npz or a DICOM folder)."""

    dataset: str
    source: str
    task: str | None
    fingerprint: str | None
    cases: tuple[CaseResult, ...]
    summary: Summary
    usable: bool
    reasons: tuple[str, ...]

    @classmethod
    def build(
        cls,
        *,
        dataset: str,
        source: str,
        task: str | None,
        fingerprint: str | None,
        results: Sequence[CaseResult],
        phi: Mapping[str, int],
        label_names: Mapping[int, str] | None = None,
        needs_train: bool = True,
    ) -> CheckReport:
        """Summarise and decide: usable needs a passing (training) case and no PHI."""
        summary = Summary.of(results, phi, label_names or {})
        reasons: list[str] = []
        if summary.phi_files:
            reasons.append(
                f"identifying DICOM attributes in {summary.phi_files} case(s): run "
                "`consortia data deidentify SRC DST` and register the de-identified copy"
            )
        if needs_train and not summary.per_split.get("train"):
            reasons.append("no usable training case")
        elif not summary.passed:
            reasons.append("no usable case")
        return cls(
            dataset=dataset,
            source=source,
            task=task,
            fingerprint=fingerprint,
            cases=tuple(results),
            summary=summary,
            usable=not reasons,
            reasons=tuple(reasons),
        )

    def without_paths(self) -> CheckReport:
        """The report as shown by default: file names, no folders (a path may name a
        patient); the source is the data set's name."""
        cases = tuple(
            replace(case, file=PurePath(case.file).name if case.file else case.file)
            for case in self.cases
        )
        return replace(self, source=self.dataset, cases=cases)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json`."""
        return asdict(self)

    def to_json(self) -> str:
        """One JSON object."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)
