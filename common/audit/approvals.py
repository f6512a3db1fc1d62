"""The runs a hospital has approved, kept by its node in `<state dir>/approvals.json`.

An approval is a pair (config hash, app hash) from `consortia.common.wire.run_identity`: the
study's validated settings and the Consortia code that runs them. Before it trains, the
node checks the run it is asked to join against this list; an unapproved run is refused
with a `RunNotApprovedError` whose message is safe to send to the server.

The file is written atomically under a lock, and a file that cannot be read is an error
naming it: it is never reset, since that would silently drop the site's approvals.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consortia.common.config.settings import RunSettings, SiteSettings, format_validation_error
from consortia.common.errors import ConfigError, ConsortiaError
from consortia.common.files import exclusive_lock, write_json_atomic
from consortia.common.logs import utc_now
from consortia.common.wire import run_identity
from consortia.common.wire.run_identity import short_hash

__all__ = [
    "APPROVALS_FILE",
    "APPROVE_COMMAND",
    "Approval",
    "ApprovalStore",
    "RunNotApprovedError",
]

APPROVALS_FILE: Final = "approvals.json"
APPROVE_COMMAND: Final = "consortia node approve RUN.toml --site-config SITE.toml"
_FORMAT: Final = "consortia-approvals"
_VERSION: Final = 1
_HEX64 = r"^[0-9a-f]{64}$"


class RunNotApprovedError(ConsortiaError):
    """The run's config, or the code that would run it, is not approved at this site.

    The message carries only short hashes and the command to approve: safe to send to the
    server."""

    def __init__(self, message: str, *, config_approved: bool) -> None:
        super().__init__(message)
        self.config_approved = config_approved


class Approval(BaseModel):
    """One approved (config hash, app hash) pair, with who approved it and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: Annotated[str, Field(min_length=1, max_length=64)]
    config_hash: Annotated[str, Field(pattern=_HEX64)]
    app_hash: Annotated[str, Field(pattern=_HEX64)]
    approved_at: Annotated[str, Field(min_length=1)]
    approved_by: Annotated[str, Field(min_length=1, max_length=200)]
    note: Annotated[str, Field(max_length=2000)] = ""


class _ApprovalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["consortia-approvals"]
    version: Literal[1]
    approvals: tuple[Approval, ...] = ()


class ApprovalStore:
    """A site's approvals in `<state_dir>/approvals.json` (no file: nothing approved)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @classmethod
    def for_site(cls, site: SiteSettings) -> ApprovalStore:
        """The store in the site's state folder (`SiteSettings.state_path`)."""
        return cls(site.state_path)

    @property
    def path(self) -> Path:
        return self.state_dir / APPROVALS_FILE

    def list(self) -> builtins.list[Approval]:
        """Every approval, oldest first."""
        return self._read()

    def find(self, config_hash: str, app_hash: str) -> Approval | None:
        """The approval of exactly this pair, if any."""
        for approval in self._read():
            if approval.config_hash == config_hash and approval.app_hash == app_hash:
                return approval
        return None

    def approve(
        self, settings: RunSettings, *, by: str, note: str = "", app: str | None = None
    ) -> Approval:
        """Approve runs of `settings` on the code `app` (default: this process's code).
        Approving an approved pair again keeps, and returns, the first approval."""
        if not by.strip():
            raise ConfigError("approved by: must not be empty")
        candidate = {
            "study": settings.name,
            "config_hash": run_identity.config_hash(settings),
            "app_hash": run_identity.app_hash() if app is None else app,
            "approved_at": utc_now(),
            "approved_by": by.strip(),
            "note": note,
        }
        try:
            approval = Approval.model_validate(candidate)
        except ValidationError as err:
            raise ConfigError(format_validation_error("approval", err)) from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.path):
            approvals = self._read()
            for existing in approvals:
                if (existing.config_hash, existing.app_hash) == (
                    approval.config_hash,
                    approval.app_hash,
                ):
                    return existing
            self._write([*approvals, approval])
        return approval

    def resolve(self, prefix: str) -> str:
        """The one approved config hash that starts with `prefix` (at least 4 hex digits)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 4:
            raise ConfigError(f"config hash prefix {prefix!r}: give at least 4 hex digits")
        matches = sorted({a.config_hash for a in self._read() if a.config_hash.startswith(prefix)})
        if not matches:
            raise ConfigError(f"{self.path}: no approval has a config hash starting {prefix!r}")
        if len(matches) > 1:
            shown = ", ".join(short_hash(match) for match in matches)
            raise ConfigError(f"config hash prefix {prefix!r} is ambiguous: {shown}")
        return matches[0]

    def revoke(self, config_hash: str) -> builtins.list[Approval]:
        """Remove every approval of this config hash (any app hash); returns them."""
        missing = f"{self.path}: no approval has config hash {short_hash(config_hash)}"
        if not self.path.is_file():
            raise ConfigError(missing)
        with exclusive_lock(self.path):
            approvals = self._read()
            removed = [a for a in approvals if a.config_hash == config_hash]
            if not removed:
                raise ConfigError(missing)
            self._write([a for a in approvals if a.config_hash != config_hash])
        return removed

    def check(self, config_hash: str, app_hash: str) -> Approval:
        """The approval of this run; `RunNotApprovedError` saying what differs if none."""
        same_config = [a for a in self._read() if a.config_hash == config_hash]
        for approval in same_config:
            if approval.app_hash == app_hash:
                return approval
        if not same_config:
            raise RunNotApprovedError(
                f"run config {short_hash(config_hash)} is not approved at this site; "
                f"the site can approve it with `{APPROVE_COMMAND}`",
                config_approved=False,
            )
        latest = same_config[-1]
        raise RunNotApprovedError(
            f"run config {short_hash(config_hash)} approved, but app code "
            f"{short_hash(app_hash)} "
            f"differs from the approved {short_hash(latest.app_hash)} (Consortia upgraded?); "
            f"the site can approve it again with `{APPROVE_COMMAND}`",
            config_approved=True,
        )

    def _read(self) -> builtins.list[Approval]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{self.path}: approvals file cannot be read: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{self.path}: approvals file is not valid JSON ({err}); fix it or approve "
                "the site's runs again into a new file"
            ) from None
        try:
            parsed = _ApprovalsFile.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(str(self.path), err)) from None
        return builtins.list(parsed.approvals)

    def _write(self, approvals: builtins.list[Approval]) -> None:
        document: dict[str, Any] = {
            "format": _FORMAT,
            "version": _VERSION,
            "approvals": [a.model_dump(mode="json") for a in approvals],
        }
        write_json_atomic(self.path, document)
