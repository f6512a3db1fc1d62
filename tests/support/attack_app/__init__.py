"""A malicious-site ClientApp for the robustness tests: Consortia's real ClientApp with one
more mod that poisons one site's training replies (see `malicious_client`)."""

from __future__ import annotations

__all__: list[str] = []
