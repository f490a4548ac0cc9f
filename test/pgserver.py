"""A real PostgreSQL server for the tests, started once per test run.

``PostgresServer.shared()`` runs ``initdb`` and ``pg_ctl start`` in a private temporary
folder (as the ``postgres`` system user when the tests run as root, which PostgreSQL
refuses), listening on 127.0.0.1 on a free port with trust authentication, and stops it at
interpreter exit. Each test asks for its own database. When no server can be started the
reason is kept, and tests skip with it.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be started here; the message says why."""


class PostgresServer:
    """One throw-away PostgreSQL cluster."""

    _shared: PostgresServer | None = None
    _failure: str | None = None

    def __init__(self) -> None:
        self.directory = ""
        self.port = 0
        self._options = ""
        self._as_user: list[str] = []

    @classmethod
    def shared(cls) -> PostgresServer:
        """The run's server, started on first use; raises PostgresUnavailable."""
        if cls._failure is not None:
            raise PostgresUnavailable(cls._failure)
        if cls._shared is None:
            server = cls()
            try:
                server.start()
            except PostgresUnavailable as error:
                cls._failure = str(error)
                raise
            cls._shared = server
            atexit.register(server.stop)
        return cls._shared

    def _run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as_user, *arguments], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        """initdb and start the server."""
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
        self.directory = tempfile.mkdtemp(prefix="irp-postgres-")
        if os.getuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to run PostgreSQL as") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise PostgresUnavailable("running as root without runuser to drop to the postgres user")
            os.chown(self.directory, account.pw_uid, account.pw_gid)
            os.chmod(self.directory, 0o700)
            self._as_user = [runuser, "-u", "postgres", "--"]
        data = os.path.join(self.directory, "data")
        result = self._run(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {result.stderr.strip()[-500:]}")
        self.port = _free_port()
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
        self._options = options
        self.resume()

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are ended), keeping its files."""
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", os.path.join(self.directory, "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (again) on its files and port."""
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl is not None
        data = os.path.join(self.directory, "data")
        result = self._run(pg_ctl, "-D", data, "-o", self._options, "-l", os.path.join(self.directory, "log"), "-w", "start")
        if result.returncode != 0:
            log = ""
            try:
                with open(os.path.join(self.directory, "log"), encoding="utf-8", errors="replace") as handle:
                    log = handle.read()[-800:]
            except OSError:
                pass
            raise PostgresUnavailable(f"pg_ctl start failed: {result.stderr.strip()[-300:]} {log}")

    def stop(self) -> None:
        """Stop the server and delete its files."""
        pg_ctl = _binary("pg_ctl")
        if pg_ctl and self.directory:
            self._run(pg_ctl, "-D", os.path.join(self.directory, "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A connection URL for ``database``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a fresh database; return its URL."""
        import psycopg

        name = "irp_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
