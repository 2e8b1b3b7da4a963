"""Connecting to a Ray cluster (failing in seconds where nothing answers) and shutting the workers down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from bonsai.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

#: the TCP probe of the cluster's address: ``ray.init`` retries an address where nothing listens for minutes
PROBE_TIMEOUT_S = 5.0
#: ``ray.init`` once the address answers
CONNECT_TIMEOUT_S = 120.0

NO_CLUSTER_HINT = "start one with `ray start --head`, then pass its address (--ray auto on that machine, --ray HOST:6379 or --ray ray://HOST:10001)"
INSTALL_HINT = "pip install 'bonsai[ray]' on the driver and on every node of the cluster"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs the ray package, which is not installed", INSTALL_HINT) from None
    return ray


def _probe(address: str) -> None:
    """Fail in seconds when nothing listens at the address: ``ray.init`` retries a dead one for minutes."""
    if address == "auto":
        return  # ray.init finds (or fails to find) a cluster started on this machine at once
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"--ray {address}: not a Ray address", "pass auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001") from None
    if not host:
        raise ConfigError(f"--ray {address}: not a Ray address", "pass auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:10001")
    port = port or (10001 if parts.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"no Ray cluster answers at {address} ({host}:{port}: {reason})", NO_CLUSTER_HINT) from None


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


async def connect(ray: Any, address: str) -> None:
    """``ray.init`` on a daemon thread with a deadline: a cluster that accepts TCP but never answers (a head
    that advertises an address this machine cannot reach) would otherwise hang the driver for minutes.
    The event loop stays free meanwhile, so Ctrl-C still works."""
    _probe(address)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException | None] = loop.create_future()

    def settle(result: BaseException | None) -> None:
        if not outcome.done():
            outcome.set_result(result)

    def init() -> None:
        result: BaseException | None = None
        try:
            ray.init(address=address, namespace="bonsai", logging_level=logging.WARNING, log_to_driver=log.isEnabledFor(logging.INFO))
        except BaseException as exc:  # handed to the event loop
            result = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the driver gave up already
            loop.call_soon_threadsafe(settle, result)

    # off the main thread ray.init cannot set its SIGTERM handler, and says so; the driver does not need it
    # (its actors die with it, and run_on_ray closes them itself)
    quiet = _DropMessage("SIGTERM handler is not set")
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(quiet)
    try:
        threading.Thread(target=init, name="ray-init", daemon=True).start()
        failure = await asyncio.wait_for(outcome, CONNECT_TIMEOUT_S)
        answered = True
    except TimeoutError:
        answered, failure = False, None
    finally:
        ray_worker_log.removeFilter(quiet)
    if not answered:
        raise EngineError(
            f"the Ray cluster at {address} accepts connections but did not answer within {CONNECT_TIMEOUT_S:g} s",
            "check that the head's advertised address is reachable from here (`ray status` on the head shows it); "
            "a head started with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 needs it set on the driver too",
        )
    if failure is not None:
        first = first_line(failure)
        raise EngineError(f"cannot connect to the Ray cluster at {address}: {first}", NO_CLUSTER_HINT) from None



async def shutdown(ray: Any, handles: list[Any], *, timeout: float) -> None:
    """Close every worker's engine and store, then kill the actors (a worker stuck in close included)."""
    if not handles:
        return
    closing = [asyncio.wrap_future(h.close.remote().future()) for h in handles]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), timeout)
    for h in handles:
        with contextlib.suppress(Exception):
            ray.kill(h, no_restart=True)



def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

