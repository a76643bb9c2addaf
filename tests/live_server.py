"""A real kernelscope server for tests: `uvicorn app.main:create_app --factory` on a free port.

The pieces every live-server test shares: picking a free loopback port, the command line,
and waiting until /healthz answers. Each test's own Server class keeps what differs (its
environment, where the log goes, how a failed start is reported).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uvicorn_command(port: int) -> list[str]:
    """The command line of a kernelscope server on 127.0.0.1:port."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float, interval: float = 0.1) -> str | None:
    """Poll url/healthz until it answers 200. Returns None once it does, "exited" when the
    process ended first, "timeout" when `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(interval)
