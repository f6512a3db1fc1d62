"""A long-lived ClientApp executor for a SuperNode started with ``--isolation process``.

Flower 1.41 runs every ClientApp task in a fresh ``flwr-clientapp`` process, so each
message pays for Python start-up and for importing torch, MONAI and Opacus (seconds on
a small CPU). In ``process`` isolation mode the SuperNode leaves launching to an external
executor. This one imports the heavy modules once, then for every task it acquires from
the SuperNode's Runtime API it forks a child that runs Flower's own ``run_clientapp``
unchanged (same protocol, same token handling, same FAB installation). Each task still
gets a fresh process (a crash or leak in one task cannot affect the next), without
the import cost.

Flower's ``run_clientapp`` module is imported in the parent too, so a task's child starts
pulling its message at once. The SuperNode makes a task acquirable before it has pulled
the task's message objects from the SuperLink; a child that asks in between would wait
out Flower's object-pull backoff (1 s, then 2 s, ...). Each child therefore wraps the
Runtime API client's ``PullObject`` with `ObjectPull`, which asks again every 20 ms while
an object is still arriving (same objects, same checks).

The Runtime API calls used here (``AcquireTask``, ``PullObject``) are Flower internals of
the 1.41 line; pyproject pins ``flwr>=1.41,<1.42`` for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["NUM_THREADS_ENV", "WarmExecutor", "main"]

logger = logging.getLogger("consortia.client.executor")

NUM_THREADS_ENV = "CONSORTIA_NUM_THREADS"
DEFAULT_PRELOAD = (
    "torch",
    "monai",
    "consortia.client.client_app",
    "flwr.supernode.runtime.run_clientapp",
)
# The app hash is computed once per node process: every task checks the run's approval
# against the code that was loaded, not files that changed on disk since.
DEFAULT_PREWARM = (
    "consortia.client.training.trainer:prewarm",
    "consortia.common.wire.run_identity:app_hash",
)


class WarmExecutor:
    """Acquire ClientApp tasks from one SuperNode and run each in a pre-warmed fork."""

    def __init__(
        self,
        runtime_api_address: str,
        *,
        insecure: bool,
        root_certificates: Path | None = None,
        poll_interval_s: float = 0.05,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        prewarm: Sequence[str] = DEFAULT_PREWARM,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")
        self.runtime_api_address = runtime_api_address
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.poll_interval_s = poll_interval_s
        self.preload = tuple(preload)
        self.prewarm = tuple(prewarm)
        self.children: set[int] = set()
        self._stopping = False

    def warm_up(self) -> float:
        """Import the heavy modules once; returns the seconds it took."""
        started = time.perf_counter()
        for module in self.preload:
            importlib.import_module(module)
        threads = os.environ.get(NUM_THREADS_ENV)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        for target in self.prewarm:  # "module:function", called without arguments
            module_name, _, function = target.partition(":")
            getattr(importlib.import_module(module_name), function)()
        return time.perf_counter() - started

    def _client(self) -> object:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        certificates = self.root_certificates.read_bytes() if self.root_certificates else None
        return RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api_address,
            insecure=self.insecure,
            root_certificates=certificates,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def _run_child(self, token: str) -> None:
        """Body of a forked child: Flower's ClientApp runner, then a hard exit."""
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            from flwr.supercore.runtime import RuntimeHttpClient
            from flwr.supernode.runtime.run_clientapp import run_clientapp

            from consortia.common.wire.object_pull import ObjectPull

            ObjectPull.wrap_class(RuntimeHttpClient)
            certificates = self.root_certificates.read_bytes() if self.root_certificates else None
            run_clientapp(
                runtime_api_address=self.runtime_api_address,
                token=token,
                insecure=self.insecure,
                certificates=certificates,
                parent_pid=os.getppid(),
                runtime_dependency_install=False,
            )
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        except BaseException:
            logger.exception("ClientApp task failed")
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.children.discard(pid)
                continue
            if done:
                self.children.discard(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    logger.warning("ClientApp task process %d exited with an error", pid)

    def stop(self, *_: object) -> None:
        self._stopping = True

    def serve(self, max_tasks: int | None = None) -> int:
        """Poll for tasks until stopped (or `max_tasks` were launched); returns the count."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        client = self._client()
        launched = 0
        parent = os.getppid()
        try:
            while not self._stopping and (max_tasks is None or launched < max_tasks):
                if os.getppid() != parent:
                    logger.warning("the node launcher is gone; executor stopping")
                    break
                response = client.AcquireTask(  # type: ignore[attr-defined]
                    AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
                )
                if response.HasField("task") and response.token:
                    logger.info("task %d acquired; starting it", response.task.task_id)
                    pid = os.fork()
                    if pid == 0:
                        self._run_child(response.token)
                    self.children.add(pid)
                    launched += 1
                self._reap()
                time.sleep(self.poll_interval_s)
        finally:
            client.close()  # type: ignore[attr-defined]
            self._shutdown_children()
        return launched

    def _shutdown_children(self, grace_s: float = 10.0) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m consortia.client.node.warm_executor --runtime-api-address HOST:PORT ...`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", type=Path)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    from consortia.common.logs import setup_logging

    setup_logging()
    executor = WarmExecutor(
        args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=args.root_certificates,
        poll_interval_s=args.poll_interval,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        # Raise, so that a call blocked in the Runtime API client's retries ends too.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    _exit_with_parent()
    seconds = executor.warm_up()
    logger.info(
        "executor ready (imports took %.1f s); serving %s", seconds, args.runtime_api_address
    )
    try:
        executor.serve()
    except KeyboardInterrupt:
        logger.info("executor stopped")
    sys.exit(0)


def _exit_with_parent() -> None:
    """Ask Linux to send SIGTERM when the node launcher dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


if __name__ == "__main__":
    main()
