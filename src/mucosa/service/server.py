"""Running the web service with uvicorn (``mucosa serve``): checks, socket, model, server."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from mucosa.allocator import mallopt
from mucosa.errors import ConfigError

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or a ConfigError saying why not (in use, bad address)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} must be between 0 and 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as error:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({error})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        reason = "is already in use" if error.errno in (98, 48, 10048) else f"cannot be used ({error.strerror})"
        raise ConfigError(f"port {port} on {host} {reason}; choose another with --port") from None
    sock.set_inheritable(True)
    return sock


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``) before the server starts its threads.

    glibc gives threads their own arenas (up to 8 per core); with request threads, the case worker and the
    runtimes' threads, freed memory stays scattered over them and the server's memory crept up by about
    6 MB a minute under load (benchmarks/serve_load.py); with two arenas it stays flat, as fast. Returns
    False where it does not apply (not Linux with glibc).
    """
    return mallopt(arena_max=arenas)


def _check(data_root: Path | None, max_upload_mb: float, queue: int, parallel: int | None) -> None:
    if data_root is not None and not Path(data_root).is_dir():
        raise ConfigError(f"--data-root {data_root}: not a folder")
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb} must be more than 0")
    if queue < 1:
        raise ConfigError(f"--queue {queue} must be at least 1")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel {parallel} must be at least 1")


def serve(checkpoint: Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          data_root: Path | None = None, max_upload_mb: float = 500.0, device: str = "auto", queue: int = 8,
          threshold: float = 0.5, window: int = 16, parallel: int | None = None, onnx: Path | None = None,
          log_level: str = "info") -> None:
    """Check the options, bind the port, load the model once, then serve until interrupted.

    Raises:
        ConfigError, CheckpointFileError: a bad option, a port in use, a bad checkpoint (before serving).
    """
    limit_malloc_arenas()
    import uvicorn

    from mucosa.service.app import Settings, create_app
    from mucosa.service.engine import Engine

    _check(data_root, max_upload_mb, queue, parallel)
    token = token or os.environ.get("MUCOSA_TOKEN") or None
    sock = bind(host, port)
    try:
        engine = Engine(checkpoint, device=device, threshold=threshold, window=window, slots=parallel, onnx=onnx)
        settings = Settings(token=token, data_root=Path(data_root) if data_root else None,
                            max_upload_mb=max_upload_mb, queue_size=queue)
        app = create_app(engine, settings)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("viewer: http://%s:%d/%s  API docs: http://%s:%d/docs", shown, bound,
                 "?token=…" if token else "", shown, bound)
        if token is None and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("listening on %s without --token: anyone who reaches this machine can use the API", host)
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, access_log=False)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its clean shutdown
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
