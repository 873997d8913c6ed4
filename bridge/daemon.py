"""The `serve` lifecycle: one bridge per data folder, found through `bridge.json`.

Every way a start can fail has its own exit code and one sentence on stderr, so whoever
spawned the bridge (the add-on, the CLI) can tell the user what to fix without reading logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from aiohttp import web

import bridge
from bridge import discovery
from bridge.config import BridgeConfig, redact_url
from bridge.errors import BridgeError
from bridge.jobs import now_iso

log = logging.getLogger(__name__)

EXIT_PORT_IN_USE = 5
EXIT_DATA_DIR_NOT_WRITABLE = 6
EXIT_BAD_CONFIG = 7
EXIT_ALREADY_RUNNING = 8
EXIT_START_FAILED = 9


class StartupError(Exception):
    """The bridge cannot start; `code` is the exit status, the message one sentence."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_config(config: BridgeConfig) -> None:
    """Refuse settings that would expose the bridge or cannot work, before touching anything."""
    if config.host not in discovery.LOOPBACK_ADDRESSES:
        raise StartupError(
            EXIT_BAD_CONFIG,
            f"--host {config.host} is not allowed: the bridge only listens on 127.0.0.1, "
            "::1 or localhost.",
        )
    if not 0 <= config.port <= 65535:
        raise StartupError(EXIT_BAD_CONFIG, f"--port {config.port} is not a port number (0-65535).")
    try:
        parts = urlsplit(config.api_base)
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise StartupError(
            EXIT_BAD_CONFIG,
            f"CHAMELAION_BASE_URL {redact_url(config.api_base)!r} is not an http(s) URL; fix it "
            "or unset it.",
        )
    if parts.username or parts.password:
        raise StartupError(
            EXIT_BAD_CONFIG,
            f"CHAMELAION_BASE_URL {redact_url(config.api_base)!r} carries a user name or "
            "password, which the API does not take (the key goes in CHAMELAION_API_KEY); "
            "remove them.",
        )
    if not 0 < config.poll_interval <= config.max_poll_interval:
        raise StartupError(
            EXIT_BAD_CONFIG, "The poll interval must be positive and at most its maximum."
        )
    if config.upload_concurrency < 1:
        raise StartupError(EXIT_BAD_CONFIG, "The upload concurrency must be at least 1.")


def not_writable(folder: Path, exc: OSError) -> StartupError:
    """The sentence for a data folder the bridge cannot create or write."""
    return StartupError(
        EXIT_DATA_DIR_NOT_WRITABLE,
        f"The data folder {folder} is not writable ({exc.strerror or exc}); choose another "
        "with --data-dir or CHAMELAION_BRIDGE_DATA.",
    )


def prepare_data_dir(folder: Path) -> None:
    """Create the data folder private to this user, tightening what an older version left
    readable: it holds the token that drives the bridge, the job store and the log."""
    try:
        discovery.secure_data_dir(folder)
    except OSError as exc:
        raise not_writable(folder, exc) from None


def acquire_lock(folder: Path) -> IO[str] | None:
    """Hold the data folder's lock for the life of the process; None if another bridge has it.

    The OS drops the lock when the process dies, even by SIGKILL, so it is never stale.
    """
    try:
        handle = discovery.open_private(folder / discovery.LOCK_FILE, "a+")
    except OSError as exc:
        raise not_writable(folder, exc) from None
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def bind(host: str, port: int, *, fixed: bool) -> socket.socket:
    """Listen on `port`, or on an ephemeral port when it is taken and was not asked for."""
    address = discovery.LOOPBACK_ADDRESSES[host]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, 10048):
            raise StartupError(
                EXIT_BAD_CONFIG, f"Cannot listen on {host} ({exc.strerror or exc})."
            ) from None
        if fixed:
            raise StartupError(
                EXIT_PORT_IN_USE,
                f"Port {port} on {host} is already in use by another program; stop it or "
                "choose another port with --port.",
            ) from None
    try:
        return socket.create_server((address, 0), family=family)
    except OSError as exc:
        raise StartupError(
            EXIT_PORT_IN_USE, f"No free port on {host} ({exc.strerror or exc})."
        ) from None


def url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _setup_logging(folder: Path) -> Path:
    path = folder / discovery.LOG_FILE
    try:
        discovery.open_private(path).close()  # created private, before the handler opens it
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise not_writable(folder, exc) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise
    return path


def _already_running(folder: Path, watch_folders: Sequence[tuple[Path, Path]]) -> int:
    info = discovery.read_discovery(folder) or {}
    where = f"at {info['url']} (pid {info.get('pid')})" if info.get("url") else "(still starting)"
    if watch_folders:
        print(
            f"A Chamelaion bridge is already running for {folder} {where} and cannot take on "
            "watch folders; stop it first or use another --data-dir.",
            file=sys.stderr,
        )
        return EXIT_ALREADY_RUNNING
    print(f"A Chamelaion bridge is already running for {folder} {where}.")
    return 0


def serve(
    config: BridgeConfig,
    *,
    fixed_port: bool = False,
    watch_folders: Sequence[tuple[Path, Path]] = (),
) -> int:
    """Run the bridge in the foreground until SIGINT/SIGTERM; returns the exit status."""
    try:
        check_config(config)
        folder = config.data_dir
        prepare_data_dir(folder)
        lock = acquire_lock(folder)
        if lock is None:
            return _already_running(folder, watch_folders)
        with lock:
            log_path = _setup_logging(folder)
            try:
                token = discovery.load_or_create_token(folder)
            except OSError as exc:
                raise not_writable(folder, exc) from None
            sock = bind(config.host, config.port, fixed=fixed_port)
            try:
                asyncio.run(_run(config, token, sock, watch_folders, log_path))
            except KeyboardInterrupt:
                pass
            except BridgeError as exc:
                log.exception("Start failed")
                raise StartupError(EXIT_START_FAILED, f"{exc} (log: {log_path})") from None
            except Exception as exc:
                log.exception("Start failed")
                raise StartupError(
                    EXIT_START_FAILED,
                    f"The bridge stopped on an unexpected error ({type(exc).__name__}); "
                    f"details are in {log_path}.",
                ) from None
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return exc.code
    return 0


async def _run(
    config: BridgeConfig,
    token: str,
    sock: socket.socket,
    watch_folders: Sequence[tuple[Path, Path]],
    log_path: Path,
) -> None:
    from bridge.server import create_app  # aiohttp app and engine: only when really serving

    runner = web.AppRunner(
        create_app(config, token, watch_folders=watch_folders), access_log=None, shutdown_timeout=5
    )
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        url = url_for(sock)
        info = {
            "pid": os.getpid(),
            "url": url,
            "port": sock.getsockname()[1],
            "version": bridge.__version__,
            "api_version": bridge.API_VERSION,
            "api_revision": bridge.API_REVISION,
            "started_at": now_iso(),
            "launched_by": os.environ.get(discovery.LAUNCHED_BY_ENV) or None,
        }
        discovery.write_discovery(config.data_dir, info)
        log.info(
            "Bridge %s listening on %s (API %s)",
            bridge.__version__,
            url,
            redact_url(config.api_base),
        )
        print(
            f"Chamelaion bridge {bridge.__version__} listening on {url} "
            f"(data folder {config.data_dir}, log {log_path}).",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            if (discovery.read_discovery(config.data_dir) or {}).get("pid") == os.getpid():
                (config.data_dir / discovery.DISCOVERY_FILE).unlink(missing_ok=True)
            log.info("Bridge stopping")
    finally:
        await runner.cleanup()
