"""Security settings of a run: `[run.secure_aggregation]`.

Secure aggregation (SecAgg+, docs/secure-aggregation.md) hides each site's update from
the server, which learns only their sum. `mode = "auto"` turns it on when a round has at
least `min_sites` training sites: with two, the sum and one's own update reveal the other.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from consortia.common.secure_aggregation.config import default_threshold, group_size

__all__ = ["SecureAggregationSettings"]


class SecureAggregationSettings(BaseModel):
    """`[run.secure_aggregation]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "on", "off"] = "auto"
    # "auto" enables it from this many training sites per round.
    min_sites: Annotated[int, Field(ge=2, le=10_000)] = 3
    # Sites needed to finish a round, as a fraction of those asked (Shamir threshold t);
    # up to n - t sites may drop out. Below one half, two disjoint halves could each
    # reconstruct a different set of secrets.
    threshold: Annotated[float, Field(gt=0.5, le=1.0)] = 0.66
    # SecAgg+ neighbours per site; 0: every other site of the round (classic SecAgg).
    neighbours: Annotated[int, Field(ge=0, le=10_000)] = 0
    # Each site clips its (weighted) update values to [-clip_range, clip_range] before
    # quantising; the quantisation step is 2 * clip_range * n / 2**32.
    clip_range: Annotated[float, Field(gt=0.0, le=1e6)] = 4.0
    # Time allowed for each key-exchange and unmasking step.
    stage_timeout_s: Annotated[float, Field(gt=0.0)] = 120.0

    def parameters_for(self, sites: int) -> tuple[int, int]:
        """(threshold, neighbours) of a session over `sites` sites: the server proposes
        them and every site checks them against its approved settings. The threshold is
        `threshold` of a site's group (itself and its neighbours), and always more than
        half of it (two disjoint halves must never both be able to unmask)."""
        neighbours = min(self.neighbours or sites - 1, sites - 1)
        group = group_size(sites, neighbours)
        wanted = math.ceil(self.threshold * group - 1e-9)
        return min(max(default_threshold(sites, neighbours), wanted), group), neighbours

    def active_for(self, training_sites: int) -> bool:
        """Whether a round with this many training sites aggregates securely."""
        if self.mode == "off":
            return False
        if self.mode == "on":
            return True
        return training_sites >= self.min_sites
