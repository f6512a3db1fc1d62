"""Typed, validated access to the fields of Flower records.

Messages cross a network: every field is checked for presence and type, and a problem
raises `RecordFieldError` naming the record and the key.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from consortia.common.errors import ConsortiaError

__all__ = [
    "RecordFieldError",
    "get_array",
    "get_array_record",
    "get_bool",
    "get_config_record",
    "get_float",
    "get_int",
    "get_metric_record",
    "get_str",
    "message_round",
    "metric_floats",
    "metric_lists",
]

_R = TypeVar("_R", ArrayRecord, ConfigRecord, MetricRecord)


class RecordFieldError(ConsortiaError):
    """A message lacks a field or carries a value of the wrong type."""


def _record(content: RecordDict, key: str, kind: type[_R]) -> _R:
    if key not in content:
        raise RecordFieldError(f"message has no '{key}' record")
    value = content[key]
    if not isinstance(value, kind):
        raise RecordFieldError(f"'{key}' is a {type(value).__name__}, not a {kind.__name__}")
    return value


def get_config_record(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord `key` of a message."""
    return _record(content, key, ConfigRecord)


def get_metric_record(content: RecordDict, key: str) -> MetricRecord:
    """The MetricRecord `key` of a message."""
    return _record(content, key, MetricRecord)


def get_array_record(content: RecordDict, key: str) -> ArrayRecord:
    """The ArrayRecord `key` of a message."""
    return _record(content, key, ArrayRecord)


def get_array(record: ArrayRecord, key: str) -> np.ndarray:
    """One array of an ArrayRecord as NumPy."""
    if key not in record:
        raise RecordFieldError(f"array record has no '{key}'")
    return record[key].numpy()


def _value(record: ConfigRecord | MetricRecord, key: str) -> object:
    if key not in record:
        raise RecordFieldError(f"record has no '{key}'")
    return record[key]


def get_int(record: ConfigRecord | MetricRecord, key: str) -> int:
    """An integer field (a bool is not an integer here)."""
    value = _value(record, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordFieldError(f"'{key}' must be an integer, got {type(value).__name__}")
    return value


def get_float(record: ConfigRecord | MetricRecord, key: str) -> float:
    """A number field, as float."""
    value = _value(record, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordFieldError(f"'{key}' must be a number, got {type(value).__name__}")
    return float(value)


def get_str(record: ConfigRecord, key: str) -> str:
    """A string field."""
    value = _value(record, key)
    if not isinstance(value, str):
        raise RecordFieldError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def get_bool(record: ConfigRecord, key: str) -> bool:
    """A boolean field."""
    value = _value(record, key)
    if not isinstance(value, bool):
        raise RecordFieldError(f"'{key}' must be true or false, got {type(value).__name__}")
    return value


def metric_floats(record: MetricRecord) -> dict[str, float]:
    """Every scalar of a MetricRecord as float (lists are an error here)."""
    return {key: get_float(record, key) for key in record}


def metric_lists(record: MetricRecord) -> dict[str, list[float]]:
    """Every list of a MetricRecord (e.g. score histograms) as floats."""
    result: dict[str, list[float]] = {}
    for key, value in record.items():
        if not isinstance(value, list):
            raise RecordFieldError(f"'{key}' must be a list of numbers")
        result[key] = [float(item) for item in value]
    return result


def message_round(message: Message) -> int:
    """The round a message belongs to: its group id (0 for site discovery)."""
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0
