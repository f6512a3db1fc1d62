"""How often a site evaluates for one approved study: the evaluation oracle is bounded
(red-team F4).

Evaluation replies carry aggregate metrics of the site's data on the weights the server
sends. A hostile server could send chosen weights any number of times, with round
numbers that turn on the final bootstrap and the saliency maps each time, and learn
about individual cases from the differences. The site therefore keeps, per approved
study (its config hash) and on disk, which rounds it evaluated on which model:

- a round number above `rounds + 1` (the final evaluation) is refused;
- each round is evaluated on one model only: the same round again on the same weights
  (a resumed run re-sending it) is answered, on other weights it is refused;
- the final extras (bootstrap replicates, saliency maps) are produced once per study.

The record survives node restarts and is keyed on what the site approved, not on the
run id the server chooses, so a new Flower run of the same study does not reset it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from consortia.common.errors import ConsortiaError
from consortia.common.files import exclusive_lock, write_json_atomic

__all__ = ["EVALUATIONS_DIR", "EvaluationAllowance", "EvaluationGrant", "EvaluationRefusedError"]

logger = logging.getLogger("consortia.client")

#: Under the node's state folder: one JSON record per approved study.
EVALUATIONS_DIR = "evaluations"
_FORMAT = "consortia.evaluations/1"


class EvaluationRefusedError(ConsortiaError):
    """An evaluation the site will not run for this study."""


@dataclass(frozen=True)
class EvaluationGrant:
    """An allowed evaluation; `extras`: the final bootstrap and saliency may be drawn."""

    extras: bool


class EvaluationAllowance:
    """The evaluations one site made for one approved study (`config_hash`)."""

    def __init__(self, state_dir: Path, config_hash: str) -> None:
        if not config_hash.isalnum():
            raise ValueError("config_hash must be a hex digest")
        self._path = state_dir / EVALUATIONS_DIR / f"{config_hash}.json"

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> dict[str, object]:
        if not self._path.exists():
            return {"format": _FORMAT, "rounds": {}, "extras_drawn": False}
        try:
            record = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise EvaluationRefusedError(
                f"{self._path}: the site's evaluation record is unreadable ({err}); "
                "refusing to evaluate"
            ) from None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise EvaluationRefusedError(f"{self._path}: not an evaluation record")
        return record

    def grant(self, round_number: int, total_rounds: int, model_sha256: str) -> EvaluationGrant:
        """Record and allow this evaluation, or raise `EvaluationRefusedError` with why."""
        if not 0 <= round_number <= total_rounds + 1:
            raise EvaluationRefusedError(
                f"evaluation of round {round_number} refused: the approved study has "
                f"{total_rounds} rounds (and one final evaluation)"
            )
        final = round_number == total_rounds + 1
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self._path):
            record = self._load()
            rounds = record["rounds"]
            if not isinstance(rounds, dict):
                raise EvaluationRefusedError(f"{self._path}: malformed 'rounds'")
            seen = rounds.get(str(round_number))
            if seen is not None and seen != model_sha256:
                raise EvaluationRefusedError(
                    f"round {round_number} was already evaluated on another model "
                    f"({str(seen)[:12]}); a site evaluates each round once per study"
                )
            extras = final and not record.get("extras_drawn", False)
            if seen is None or extras:
                rounds[str(round_number)] = model_sha256
                record["extras_drawn"] = bool(record.get("extras_drawn")) or extras
                write_json_atomic(self._path, record)
        if final and not extras:
            logger.info("final evaluation repeated: no second bootstrap or saliency maps")
        return EvaluationGrant(extras=extras)
