"""Model weights on the wire: one flat float32 vector plus a layout both sides derive.

Flower moves every `Array` of a message as separate objects, each with its own HTTP
requests at every hop (SuperLink, SuperNode, ClientApp), so a model with a few dozen
tensors costs a few hundred requests per round trip. Sending the weights as a single
vector in the order of the model factory's `state_dict` makes that one object (split
only into Flower's 5 MB chunks), and it is the shape secure aggregation works on.
The layout is not sent: server and sites build the same model from the same settings,
so they agree on names, shapes and order (`layout_fingerprint` checks that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["WeightLayout", "WeightLayoutError"]


class WeightLayoutError(ValueError):
    """A vector or a state dict does not fit the layout."""


@dataclass(frozen=True)
class WeightLayout:
    """Names, shapes and dtypes of a model's state dict, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor | np.ndarray]) -> WeightLayout:
        names, shapes, dtypes = [], [], []
        for name, value in state.items():
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            if not np.issubdtype(array.dtype, np.floating):
                raise WeightLayoutError(f"{name}: only floating-point weights are sent")
            names.append(name)
            shapes.append(tuple(int(d) for d in array.shape))
            dtypes.append(str(array.dtype))
        return cls(tuple(names), tuple(shapes), tuple(dtypes))

    @property
    def size(self) -> int:
        """Number of values in the flat vector."""
        return int(sum(int(np.prod(shape)) for shape in self.shapes))

    def fingerprint(self) -> str:
        """SHA-256 over the layout: equal on both sides iff the models match."""
        text = ";".join(
            f"{n}|{s}|{d}" for n, s, d in zip(self.names, self.shapes, self.dtypes, strict=True)
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def flatten(self, state: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
        """The state dict as one float32 vector in layout order."""
        if list(state) != list(self.names):
            raise WeightLayoutError("state dict keys differ from the layout")
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            value = state[name]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            if tuple(array.shape) != shape:
                raise WeightLayoutError(f"{name}: shape {tuple(array.shape)} != {shape}")
            parts.append(np.asarray(array, dtype=np.float32).ravel())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """A state dict (tensors in the layout's dtypes) from a flat vector."""
        if vector.ndim != 1:
            raise WeightLayoutError(f"expected a 1-D vector, got shape {vector.shape}")
        if vector.size != self.size:
            raise WeightLayoutError(f"vector has {vector.size} values, layout needs {self.size}")
        if not np.all(np.isfinite(vector)):
            raise WeightLayoutError("vector holds NaN or infinite values")
        state: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            count = int(np.prod(shape))
            chunk = vector[offset : offset + count].reshape(shape).astype(dtype)
            state[name] = torch.from_numpy(np.ascontiguousarray(chunk))
            offset += count
        return state
