"""`consortia data check FOLDER`: a folder of DICOM files checked as it is, without a
manifest. Each series is a case (no labels, no splits); files that are not readable
DICOM are reported with their reason; every file goes through the PHI guard.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from consortia.client.data.check import (
    CaseResult,
    CheckReport,
    failed_result,
    passed_result,
    phi_key,
)
from consortia.client.data.dicom.phi import guard_file
from consortia.client.data.dicom.series import read_dicom_series, scan_dicom_folder
from consortia.client.data.formats.volume import CaseProblem
from consortia.client.data.reader import CaseData

__all__ = ["check_dicom_folder"]

logger = logging.getLogger("consortia.client.data.dicom.folder_check")


def _relative(path: str, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def _report(folder: Path, results: list[CaseResult], phi: Counter[str]) -> CheckReport:
    """A DICOM folder's report: no task, no fingerprint, no training split needed."""
    return CheckReport.build(
        dataset=folder.name,
        source=str(folder),
        task=None,
        fingerprint=None,
        results=results,
        phi=phi,
        needs_train=False,
    )


def check_dicom_folder(
    folder: Path,
    *,
    modalities: Collection[str] | None = None,
    on_case: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Read every series under `folder` as training would (without labels) and report."""
    folder = Path(folder).resolve()
    results: list[CaseResult] = []
    phi: Counter[str] = Counter()
    try:
        scan = scan_dicom_folder(folder)
    except CaseProblem as problem:
        results.append(
            failed_result(folder.name or str(folder), None, problem.path, problem.reason)
        )
        return _report(folder, results, phi)
    for bad in scan.problems:
        results.append(failed_result(_relative(bad.path, folder), None, bad.path, bad.reason))
    for number, (_, files) in enumerate(scan.series, start=1):
        case_id = f"series-{number}"
        keys: list[str] = []
        for path in files:
            try:
                keys.extend(phi_key(finding) for finding in guard_file(path))
            except CaseProblem as skipped:
                logger.debug("PHI guard skipped %s: %s", path, skipped.reason)
        phi.update(keys)
        try:
            series = read_dicom_series(files, modalities=modalities)
        except CaseProblem as failure:
            result = failed_result(case_id, None, failure.path, failure.reason)
        else:
            volume = series.volume
            data = CaseData(volume.array, None, (), volume, series.patient_id, len(files))
            result = replace(passed_result(case_id, None, data), file=str(files[0].parent))
        if keys:
            result = replace(result, phi_findings=len(keys))
        results.append(result)
        if on_case is not None:
            on_case(number, len(scan.series))
    return _report(folder, results, phi)
