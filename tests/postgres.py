"""A throwaway PostgreSQL cluster for tests: ``initdb`` and ``pg_ctl`` into a temporary folder, listening on a
unix socket only, run as an unprivileged user (``postgres`` when the tests run as root), stopped at the end.

Without PostgreSQL's server programs (``initdb``, ``pg_ctl``: Debian's ``postgresql`` package) the tests that
need it skip, unless ``MUCOSA_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

REQUIRE = "MUCOSA_REQUIRE_POSTGRES"
# Speed over durability: the cluster is thrown away.
_SETTINGS = ("-c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
             "-c max_connections=200")


def _server_program(name: str) -> str | None:
    """``name`` on PATH, else in Debian's /usr/lib/postgresql/VERSION/bin (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]),
                        reverse=True)
    return candidates[0] if candidates else None


def missing_postgres(reason: str) -> None:
    """Skip the test, or fail it when PostgreSQL is required."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} but {REQUIRE}=1 (install it: apt-get install -y postgresql)", pytrace=False)
    pytest.skip(reason)


class PostgresCluster:
    """A running throwaway cluster; :meth:`new_database` gives each test a database of its own."""

    def __init__(self, folder: Path, pg_ctl: str, runas: list[str]) -> None:
        self.folder, self.pg_ctl, self.runas = folder, pg_ctl, runas
        self.socket = folder  # the server's unix socket lies in the cluster's folder

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket}"

    def new_database(self, template: str | None = None, name: str | None = None) -> str:
        """A fresh database, empty or a copy of the database ``template``; returns its URL."""
        import psycopg

        name = name or "t_" + uuid.uuid4().hex[:12]
        copy = f" TEMPLATE {template}" if template else ""
        with psycopg.connect(host=str(self.socket), user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}{copy}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.runas, self.pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def _runas() -> tuple[list[str], int | None]:
    """The command prefix that runs as an unprivileged user, and that user's id (None: ourselves)."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing_postgres("the tests run as root and there is no 'postgres' user to run PostgreSQL as")
    runuser = shutil.which("runuser")
    if runuser is None:
        missing_postgres("runuser (util-linux) is missing, needed to run PostgreSQL as the 'postgres' user")
    return [runuser, "-u", "postgres", "--"], user.pw_uid


_PREFIX = "mucosa-pg-"
_OWNER = "owner.pid"  # the test process that started the cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    return True


def _stop_orphans(pg_ctl: str, runas: list[str]) -> None:
    """Stop the clusters that killed test runs left behind (their owner process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((folder / _OWNER).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            PostgresCluster(folder, pg_ctl, runas).stop()


def start_cluster() -> PostgresCluster:
    """Start a cluster (skips or fails, see the module's description, when PostgreSQL is missing)."""
    initdb, pg_ctl = _server_program("initdb"), _server_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        missing_postgres("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing_postgres("psycopg (PostgreSQL's Python driver) is not installed")
    runas, uid = _runas()
    _stop_orphans(pg_ctl, runas)
    folder = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (folder / _OWNER).write_text(str(os.getpid()))
    if uid is not None:
        os.chown(folder, uid, -1)
    steps = [[*runas, initdb, "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
              "--locale=C", "--no-sync"],
             [*runas, pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "60",
              "-o", f"-k {folder} {_SETTINGS}", "start"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
            shutil.rmtree(folder, ignore_errors=True)
            pytest.fail(f"{Path(step[len(runas)]).name} failed: {done.stderr.strip()[-800:]} {log[-800:]}",
                        pytrace=False)
    return PostgresCluster(folder, pg_ctl, runas)
