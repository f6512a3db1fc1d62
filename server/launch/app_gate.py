"""Which Flower Apps the coordinator's SuperLink may start: Consortia's installed app only.

A Consortia study travels as a Flower App Bundle (FAB) that holds nothing but a
`pyproject.toml`: it names the installed ServerApp/ClientApp components and carries the
validated run settings as run config (`consortia.server.launch.submit.write_app_dir`). Flower
would run any other FAB's code on the server's machine, so the SuperLink's gate
(`consortia.server.launch.superlink_gate`) checks every Control API `StartRun` request here,
before Flower stores or loads anything:

- the request carries the FAB itself (no app stored earlier, no hub app spec);
- the FAB is a zip holding exactly `pyproject.toml` and Flower's `.info/CONTENT` index,
  and no code or other files of any kind;
- its components are exactly Consortia's (`APP_COMPONENTS`).

Pure functions, no Flower process involved: the refusal reason is what the gate records in
the server's audit log and answers the caller.
"""

from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile
from dataclasses import dataclass

from consortia.common.errors import ConsortiaError
from consortia.server.launch.submit import APP_COMPONENTS

__all__ = ["ALLOWED_FAB_FILES", "AppRefusedError", "CheckedApp", "check_fab", "check_start_run"]

#: The only files a Consortia FAB holds: the app's pyproject.toml and Flower's index.
ALLOWED_FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
_MAX_PYPROJECT_BYTES = 4 * 1024 * 1024  # the settings JSON is a few kB; this bounds a bomb


class AppRefusedError(ConsortiaError):
    """A run request that would start something other than the installed Consortia app."""


@dataclass(frozen=True)
class CheckedApp:
    """A FAB that passed the check: its SHA-256 (of the bundle as sent)."""

    fab_sha256: str


def _components(pyproject: bytes) -> dict[str, object]:
    try:
        document = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise AppRefusedError(f"the app's pyproject.toml is not valid TOML ({err})") from None
    app = document.get("tool", {}).get("flwr", {}).get("app", {})
    components = app.get("components") if isinstance(app, dict) else None
    if not isinstance(components, dict):
        raise AppRefusedError("the app's pyproject.toml has no [tool.flwr.app.components]")
    return components


def check_fab(content: bytes) -> CheckedApp:
    """Check one FAB's bytes; `AppRefusedError` naming what is foreign about it."""
    digest = hashlib.sha256(content).hexdigest()
    try:
        bundle = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        raise AppRefusedError("the app bundle is not a zip file") from None
    with bundle:
        names = set(bundle.namelist())
        foreign = sorted(names - ALLOWED_FAB_FILES)
        if foreign:
            shown = ", ".join(repr(name[:80]) for name in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise AppRefusedError(
                f"the app bundle ships files of its own ({shown}{more}); only Consortia's "
                "installed app may run on this server, and its bundle holds pyproject.toml only"
            )
        if "pyproject.toml" not in names:
            raise AppRefusedError("the app bundle has no pyproject.toml")
        if bundle.getinfo("pyproject.toml").file_size > _MAX_PYPROJECT_BYTES:
            raise AppRefusedError("the app's pyproject.toml is larger than 4 MiB")
        components = _components(bundle.read("pyproject.toml"))
    if components != APP_COMPONENTS:
        raise AppRefusedError(
            f"the app's components {dict(sorted(components.items()))} are not Consortia's "
            f"installed ones {dict(sorted(APP_COMPONENTS.items()))}"
        )
    return CheckedApp(fab_sha256=digest)


def check_start_run(body: bytes) -> CheckedApp:
    """Check a Control API `StartRun` request body (protobuf) before Flower sees it."""
    from flwr.proto.control_pb2 import StartRunRequest
    from google.protobuf.message import DecodeError

    request = StartRunRequest()
    try:
        request.ParseFromString(body)
    except DecodeError:
        raise AppRefusedError("the run request is not a valid StartRun message") from None
    if request.app_spec:
        raise AppRefusedError(
            "runs of stored or hub apps (app_spec) are refused: send the Consortia app itself"
        )
    if not request.fab.content:
        raise AppRefusedError("the run request carries no app bundle (a stored app is refused)")
    return check_fab(request.fab.content)
