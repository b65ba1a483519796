"""Small process and network helpers shared by the component fixtures.

Every wait here has a timeout and every failure names the component, so a missing binary,
a port clash or a server that never comes up fails the test session with a clear message
instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


class ComponentError(RuntimeError):
    """A real component could not be found, started or reached."""


def cache_dir() -> Path:
    """Root of the per-user cache holding built or downloaded components (outside the repo)."""
    root = os.environ.get("PDSCALER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pdscaler"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """The first of ``count`` consecutive TCP ports on ``host`` that are all free now."""
    for _ in range(tries):
        base = free_port(host)
        if base + count > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise ComponentError(f"no {count} consecutive free ports on {host} after {tries} tries")


def require_binary(path: Path | str, component: str, install_hint: str) -> Path:
    """Return the binary's path or raise naming the component and how to install it."""
    found = Path(path) if os.path.sep in str(path) else shutil.which(str(path))
    if found is None or not Path(found).exists():
        raise ComponentError(f"{component}: binary {path} not found; run {install_hint}")
    return Path(found)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    component: str,
    what: str,
    interval_s: float = 0.1,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``check`` until it returns True; raise ComponentError after ``timeout_s``.

    If ``process`` exits while waiting, fail at once with the tail of its log.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if process is not None and process.poll() is not None:
            raise ComponentError(
                f"{component} exited with code {process.returncode} before {what}"
                + _log_tail(log_path)
            )
        if time.monotonic() > deadline:
            raise ComponentError(
                f"{component}: timed out after {timeout_s:.0f} s waiting for {what}"
                + _log_tail(log_path)
            )
        time.sleep(interval_s)


def http_ok(url: str, timeout_s: float = 2.0, context: object | None = None) -> bool:
    """True when a GET on ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:  # type: ignore[arg-type]
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group with stdout and stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by stop_process
    return subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate the process group (SIGTERM, then SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _log_tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last {len(tail)} lines of {log_path} ---\n" + "\n".join(tail)
