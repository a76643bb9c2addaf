"""A real PostgreSQL for tests: initdb in a temp folder, a loopback port, a database, stopped after.

`start_postgres(tmp_path) -> (url, stop)` is what distributed-mode tests call;
`PostgresServer` beneath it can also stop and start the same cluster again (a database
outage and its end). Debian's `postgresql` package puts its programs in
/usr/lib/postgresql/<version>/bin (found by glob, newest version first). Running as
root, initdb and postgres run as the `postgres` user (`runuser -u postgres --`), in a
folder of their own under the system temp directory (pytest's tmp_path sits in a folder
only root may enter). Without PostgreSQL the caller skips, except under CI=true, where a
missing PostgreSQL fails the test: CI must install it (Debian package `postgresql`).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.live_server import free_port

DATABASE = "kernelscope"
SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


def postgres_bin() -> Path | None:
    """The bin folder of the newest installed PostgreSQL, None without one."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.parent.name))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def require_postgres() -> Path:
    """The bin folder, or skip (locally) / fail (CI=true) naming what is missing."""
    folder = postgres_bin()
    problem = None
    if folder is None:
        problem = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; Debian package postgresql)"
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            problem = f"running as root needs the user {SUPERUSER!r} to run PostgreSQL (Debian package postgresql)"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{problem}; CI must provide it", pytrace=False)
        pytest.skip(problem)
    assert folder is not None
    return folder


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1:port, its socket and data in `folder`."""

    def __init__(self, bin_dir: Path, folder: Path, port: int):
        self.bin_dir, self.folder, self.port = bin_dir, folder, port
        self.data = folder / "data"
        self.sockets = folder / "sockets"
        self.log = folder / "postgres.log"
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT + 30)
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}\n{log}")
        return result

    def init(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            for path in (self.folder, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"  # a test cluster: speed over safety
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(START_TIMEOUT), "start"
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def create_database(self, name: str = DATABASE) -> str:
        """Create database `name`; returns its URL."""
        self._run("createdb", "-h", str(self.sockets), "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url.rsplit("/", 1)[0] + "/" + name

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(tmp_path: Path) -> tuple[str, Callable[[], None]]:
    """Start a PostgreSQL with an empty database `kernelscope`; returns (url, stop).

    `stop()` shuts the server down and removes its folder. `tmp_path` gets a note of where
    the cluster lives (its log helps when a test fails)."""
    server = postgres_server(tmp_path)
    return server.url, server.remove


def postgres_server(tmp_path: Path) -> PostgresServer:
    """Like start_postgres, but the server object itself (stop() and start() it again, remove())."""
    bin_dir = require_postgres()
    folder = Path(tempfile.mkdtemp(prefix="kernelscope-pg-"))
    os.chmod(folder, 0o755)
    server = PostgresServer(bin_dir, folder, free_port())
    Path(tmp_path, "postgres-folder.txt").write_text(f"{folder}\n")
    try:
        server.init()
        server.start()
        server.create_database()
    except BaseException:
        server.remove()
        raise
    return server


def wait_until_stopped(server: PostgresServer, timeout: float = 30.0) -> None:
    """pg_ctl stop -w already waits; this also waits until the port refuses connections."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"PostgreSQL on port {server.port} still accepts connections")
