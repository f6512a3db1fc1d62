"""What one round of DP-SGD at a site spent: one record for the site's training, its
ledger, the train reply and the server's run record.

`PrivacySpend` is a frozen pydantic model. `to_record()` / `from_record()` convert it to
and from the Flower `ConfigRecord` a train reply carries (keys in
`consortia.common.wire.records`, unchanged); `from_record` checks every field and raises
`RecordFieldError` naming the field. `epsilon` covers the data set's whole history up to
and including the round; `run_epsilon` only the rounds of this run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Final

from flwr.app import ConfigRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consortia.common.config.privacy_settings import Accountant
from consortia.common.wire import records as rk
from consortia.common.wire.record_fields import RecordFieldError, get_float, get_int, get_str

if TYPE_CHECKING:  # accounting loads Opacus and torch; readers of run folders run without them
    from consortia.common.privacy.accounting import HistoryEntry

__all__ = ["SPEND_FIELDS", "PrivacySpend", "spend_error"]

# Tolerance of `run_epsilon <= epsilon` in a train reply (both come from one accountant).
_RUN_EPSILON_SLACK: Final = 1e-9

_Positive = Annotated[float, Field(gt=0.0)]
_NonNegative = Annotated[float, Field(ge=0.0)]


class PrivacySpend(BaseModel):
    """One round's DP-SGD spend at a site (Poisson sampling, Gaussian noise)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    noise_multiplier: _Positive
    sample_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    steps: Annotated[int, Field(ge=0)]
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    epsilon: _NonNegative
    run_epsilon: _NonNegative
    accountant: Accountant
    max_grad_norm: _Positive

    def history_entry(self) -> HistoryEntry:
        """The round as the accountant's history counts it."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def spend(self) -> PrivacySpend:
        """Only the spend (a subclass, e.g. a ledger entry, sheds its own fields)."""
        return PrivacySpend.model_validate(self.model_dump(include=set(SPEND_FIELDS)))

    def to_record(self) -> ConfigRecord:
        """The `privacy` record of a train reply."""
        return ConfigRecord({_WIRE[name]: getattr(self, name) for name in SPEND_FIELDS})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> PrivacySpend:
        """The spend a train reply reports, every field checked: `RecordFieldError`
        names the record key that is missing, mistyped or out of range."""
        values: dict[str, Any] = {
            name: _read(record, name, kind) for name, kind in _WIRE_KINDS.items()
        }
        if values["steps"] <= 0:
            raise RecordFieldError(f"'{rk.P_STEPS}' must be positive, got {values['steps']}")
        if values["run_epsilon"] > values["epsilon"] + _RUN_EPSILON_SLACK:
            raise RecordFieldError(
                f"'{rk.P_RUN_EPSILON}' {values['run_epsilon']} exceeds "
                f"'{rk.P_EPSILON}' {values['epsilon']}"
            )
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise RecordFieldError(spend_error(err, _WIRE)) from None


SPEND_FIELDS: Final = tuple(PrivacySpend.model_fields)

# Field name -> key of the Flower record a train reply carries.
_WIRE: Final = {
    "noise_multiplier": rk.P_NOISE_MULTIPLIER,
    "sample_rate": rk.P_SAMPLE_RATE,
    "steps": rk.P_STEPS,
    "delta": rk.P_DELTA,
    "epsilon": rk.P_EPSILON,
    "run_epsilon": rk.P_RUN_EPSILON,
    "accountant": rk.P_ACCOUNTANT,
    "max_grad_norm": rk.P_MAX_GRAD_NORM,
}
_WIRE_KINDS: Final = {
    name: (int if name == "steps" else str if name == "accountant" else float) for name in _WIRE
}


def _read(record: ConfigRecord, name: str, kind: type) -> Any:
    key = _WIRE[name]
    if kind is int:
        return get_int(record, key)
    if kind is str:
        return get_str(record, key)
    value = get_float(record, key)
    if not math.isfinite(value):
        raise RecordFieldError(f"'{key}' must be finite, got {value}")
    return value


def spend_error(err: ValidationError, names: dict[str, str] | None = None) -> str:
    """A readable message for a failed validation: each field's path
    (`rounds[1].privacy.site-a.steps`; a record key where `names` maps the field) with
    pydantic's reason and the value it got."""
    problems = []
    for error in err.errors():
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).removeprefix(".")
        location = (names or {}).get(location, location)
        problems.append(f"'{location}': {error['msg']} (got {error.get('input')!r:.60})")
    return "; ".join(problems)
