"""Running the web service with uvicorn (``mucosa serve``): socket, model, server."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket

from mucosa.allocator import mallopt
from mucosa.errors import ConfigError
from mucosa.service.settings import ServeSettings

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one), or a ConfigError saying why not (in use,
    bad address)."""
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


def freeze_startup_objects() -> None:
    """Keep what the server made before serving (the model, the modules, the application) out of the garbage
    collector's passes (``gc.freeze``), after one last collection.

    A full pass walks every object the process holds: with the model and its libraries loaded, each one stopped
    every thread for about 0.2 s, several times a minute under load (benchmarks/store_load.py: the slowest
    answers); frozen, a pass walks only what requests made since, in milliseconds. What is frozen stays for the
    server's life, as it does anyway.
    """
    gc.collect()
    gc.freeze()


def serve(settings: ServeSettings) -> None:
    """Bind the port, load the model once, then serve until interrupted (the settings are checked already).

    Raises:
        ConfigError, CheckpointFileError: no checkpoint or a bad one, a port in use (before serving).
        StoreError: the case store cannot be opened; MigrationNeeded: it needs ``mucosa store upgrade`` (it is
            left as it is).
    """
    if settings.checkpoint is None:
        raise ConfigError("mucosa serve needs --checkpoint (or serve.checkpoint in its --config)")
    limit_malloc_arenas()
    import uvicorn

    from mucosa.service.app import create_app, open_store
    from mucosa.service.engine import Engine

    # the checkpoint first: a missing or bad one is said as such, whatever the store's state; then the store
    # (one that needs an upgrade is refused, unchanged), then the port
    engine = Engine(settings.checkpoint, device=settings.device, threshold=settings.threshold,
                    window=settings.window, slots=settings.parallel, onnx=settings.onnx)
    store = open_store(settings)
    try:
        if settings.secret is not None:  # its user disabled: refused in one line, before the port is taken
            store.use_token(settings.secret)
        sock = bind(settings.host, settings.port)
    except BaseException:
        store.close()
        raise
    try:
        app = create_app(engine, settings, store)
        _announce(settings, sock.getsockname()[1], store)
        config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=3, access_log=False)
        freeze_startup_objects()
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its clean shutdown
            uvicorn.Server(config).run(sockets=[sock])
    except BaseException:
        store.close()  # the application closes it once it has started
        raise
    finally:
        sock.close()


def _announce(settings: ServeSettings, port: int, store) -> None:
    """Where the viewer and the API's documentation are; a warning when anyone may use the API."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("viewer: http://%s:%d/%s  API docs: http://%s:%d/docs", host, port,
             "?token=…" if settings.token else "", host, port)
    log.info("case store: %s (%s)", store.location, store.backend)
    if settings.token is None and settings.host not in ("127.0.0.1", "localhost", "::1") and \
            not any(user.name != "local" for user in store.users()):
        log.warning("listening on %s without --token or users (mucosa users add): anyone who reaches this machine "
                    "can use the API, as the admin 'local'", settings.host)
