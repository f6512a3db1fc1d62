"""The coordinator's SuperLink behind a gate: sites reach the Fleet API and nothing else.

Flower 1.41 serves its Fleet, Control and Runtime APIs as one FastAPI app on one port, and
the open-source Control API has no login: whoever reaches that port can start a run, and
a run's ServerApp code executes on the server's machine. This module runs Flower's own
SuperLink app (`flwr.superlink.main.create_app`, with Flower's own argument parsing and
lifespan) under uvicorn on two listeners of one process:

- the **public** listener (`--fleet-host`/`--fleet-port`, e.g. 0.0.0.0:9092) passes only
  `/v1/fleet/...` and `/health` to Flower; any other path is answered 403 and recorded;
- the **control** listener is bound to loopback only (`--host 127.0.0.1 --port 9093`, as
  Flower's own arguments): the coordinator's `consortia run`, `consortia site register`
  and Flower's SuperExec (ServerApp processes) reach Control and Runtime there, from the
  server's own machine (or through an SSH tunnel; docs/security.md).

Defence in depth on the control listener: every `StartRun` request is checked by
`consortia.server.launch.app_gate` before Flower parses it; a foreign app is refused with 403,
so Flower never stores or loads it. Refusals are written to the server's audit log
(`<state dir>/audit.jsonl`, label `server:superlink`).

Run as `python -m consortia.server.launch.superlink_gate [--fleet-host H] [--fleet-port P]
[--audit-log FILE] [--allow-app-code] -- <flower-superlink arguments>`;
`consortia.server.launch.superlink` builds that command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import ipaddress
import json
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

from consortia.common.audit.log import AuditLog
from consortia.server.launch.app_gate import AppRefusedError, check_start_run

__all__ = [
    "API_REFUSED",
    "APP_REFUSED",
    "APP_STARTED",
    "FLEET_PATHS",
    "SUPERLINK_LOG_LABEL",
    "ControlGate",
    "FleetOnlyGate",
    "main",
]

logger = logging.getLogger("consortia.server.launch.superlink_gate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The label of the SuperLink's own audit log (runs have their own logs).
SUPERLINK_LOG_LABEL = "server:superlink"
API_REFUSED = "api_refused"  # listener, path, peer: a non-Fleet request on the public port
APP_REFUSED = "app_refused"  # reason, fab_sha256: a run of a foreign app was refused
APP_STARTED = "app_accepted"  # fab_sha256: a run of Consortia's app was passed to Flower

#: What the public listener passes to Flower: the Fleet API and the health probe.
FLEET_PATHS = ("/v1/fleet/",)
_HEALTH_PATHS = frozenset({"/health"})
_START_RUN = "/v1/control/start-run"
_MAX_BODY_BYTES = 64 * 1024 * 1024


class _Audit:
    """The SuperLink's audit log, opened on first use; never raises into a request."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._log: AuditLog | None = None
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> None:
        if self._path is None:
            return
        try:
            with self._lock:
                if self._log is None:
                    self._log = AuditLog.open(self._path, SUPERLINK_LOG_LABEL)
                self._log.append(event, **fields)
        except Exception:  # the refusal itself must still happen
            logger.exception("could not write the SuperLink audit record %s", event)


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address, or the name localhost) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _refuse(send: Send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FleetOnlyGate:
    """ASGI wrapper for the public listener: Fleet API and health only, else 403."""

    def __init__(self, app: ASGIApp, audit: _Audit) -> None:
        self._app = app
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the control listener owns the lifespan
            return
        path = str(scope.get("path", ""))
        if scope["type"] == "http" and (path.startswith(FLEET_PATHS) or path in _HEALTH_PATHS):
            await self._app(scope, receive, send)
            return
        peer = _peer(scope)
        logger.warning("refused %s from %s on the public port (Fleet API only)", path[:200], peer)
        self._audit.record(API_REFUSED, listener="public", path=path[:200], peer=peer)
        if scope["type"] == "http":
            await _refuse(
                send,
                403,
                "this port serves the Fleet API only; the Control and Runtime APIs are "
                "reachable on the server machine",
            )
        # other scope types (websocket) are closed by not accepting them


class ControlGate:
    """ASGI wrapper for the loopback listener: refuses any peer that is not loopback, and
    checks every StartRun request's app before Flower sees it."""

    def __init__(self, app: ASGIApp, audit: _Audit, *, allow_app_code: bool = False) -> None:
        self._app = app
        self._audit = audit
        self._allow_app_code = allow_app_code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        peer = _peer(scope)
        path = str(scope.get("path", ""))
        if not _is_loopback(peer):
            self._audit.record(API_REFUSED, listener="control", path=path[:200], peer=peer)
            await _refuse(send, 403, "the Control and Runtime APIs answer loopback peers only")
            return
        if path != _START_RUN or scope.get("method") != "POST" or self._allow_app_code:
            await self._app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await _refuse(send, 413, "the run request is larger than 64 MiB")
            return
        try:
            checked = check_start_run(body)
        except AppRefusedError as err:
            logger.warning("refused a run: %s", err)
            self._audit.record(APP_REFUSED, reason=str(err), peer=peer)
            await _refuse(send, 403, f"run refused: {err}")
            return
        self._audit.record(APP_STARTED, fab_sha256=checked.fab_sha256)
        await self._app(scope, _replay(body), send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="consortia-superlink", add_help=True)
    parser.add_argument("--fleet-host", default=None, help="public listener (Fleet API only)")
    parser.add_argument("--fleet-port", type=int, default=None)
    parser.add_argument("--audit-log", type=Path, default=None)
    parser.add_argument(
        "--allow-app-code",
        action="store_true",
        help="research harnesses only: skip the app check (never from `consortia server`)",
    )
    ours, flower = parser.parse_known_args(argv)
    if flower and flower[0] == "--":
        flower = flower[1:]
    if (ours.fleet_host is None) != (ours.fleet_port is None):
        parser.error("--fleet-host and --fleet-port go together")
    return ours, flower


def _serve(apps: list[tuple[ASGIApp, str, int, bool]], ssl: dict[str, Any]) -> None:
    """Serve each (app, host, port, owns_lifespan) on its own uvicorn listener in one
    event loop; the first listener captures SIGINT/SIGTERM and stops all of them."""
    import uvicorn
    from flwr.common.logger import console_handler
    from flwr.supercore.http_logging import get_uvicorn_log_config

    class _Follower(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    log_config = get_uvicorn_log_config(console_handler.level)
    servers: list[uvicorn.Server] = []
    for index, (app, host, port, lifespan) in enumerate(apps):
        config = uvicorn.Config(
            app=app,
            host=host,
            port=port,
            lifespan="on" if lifespan else "off",
            log_config=log_config,
            access_log=False,
            workers=1,
            **ssl,
        )
        servers.append(uvicorn.Server(config) if index == 0 else _Follower(config))

    async def run_all() -> None:
        followers = [asyncio.create_task(server.serve()) for server in servers[1:]]
        try:
            await servers[0].serve()
        finally:
            for server in servers[1:]:
                server.should_exit = True
            await asyncio.gather(*followers, return_exceptions=True)

    asyncio.run(run_all())


def main(argv: list[str] | None = None) -> None:
    """Start Flower's SuperLink app behind the gates (see the module docstring)."""
    ours, flower_args = _parse(sys.argv[1:] if argv is None else argv)
    # Flower's private CLI pieces, pinned by pyproject (flwr 1.41.x); see docs/adr/0007.
    from flwr.superlink.main import create_app

    flower_cli = importlib.import_module("flwr.superlink.cli.flower_superlink")

    sys.argv = ["flower-superlink", *flower_args]
    config = flower_cli._parse_superlink_lifespan_config()
    if not _is_loopback(config.host):
        raise SystemExit("consortia-superlink: the control listener must be a loopback host")
    audit = _Audit(ours.audit_log)
    flower_app = create_app(config, flower_cli.SuperLinkLifespan)
    apps: list[tuple[ASGIApp, str, int, bool]] = [
        (
            ControlGate(flower_app, audit, allow_app_code=ours.allow_app_code),
            config.host,
            config.port,
            True,
        )
    ]
    if ours.fleet_host is not None:
        apps.append((FleetOnlyGate(flower_app, audit), ours.fleet_host, ours.fleet_port, False))
    ssl = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile}
    logger.info(
        "SuperLink: Fleet API on %s, Control/Runtime on %s:%s (loopback only)",
        f"{ours.fleet_host}:{ours.fleet_port}" if ours.fleet_host else "no public listener",
        config.host,
        config.port,
    )
    _serve(apps, ssl)


if __name__ == "__main__":
    main()
