"""Real service processes for tests: Celery workers (with beat) and gunicorn."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

VENV_BIN = Path(sys.executable).parent


class Process:
    """A child process in its own session, so it and its pool can be killed together."""

    def __init__(self, argv: list[str], *, log_path: Path, env: dict | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{needle!r} not seen in {timeout}s:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        """SIGKILL the whole process group: a crash, with no chance to clean up."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the leader only, as a process manager does: gunicorn and Celery then
        stop their own children in order (each child finishes its exit path: counts
        flushed, coverage data saved). Whatever is left after `timeout` is killed."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()


def stop_all(procs) -> None:
    """Stop several processes at once: each is asked to stop before any is waited for,
    so their shutdowns overlap instead of adding up."""
    procs = list(procs)
    for proc in procs:
        popen = getattr(proc, "popen", None)  # anything else with a stop() is just stopped
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.terminate()
    for proc in procs:
        proc.stop()


def start_worker(tmp_path: Path, *, queues: str = "webhooks,default", concurrency: int = 2,
                 beat: bool = True, env: dict | None = None, name: str = "worker") -> Process:
    argv = [str(VENV_BIN / "celery"), "-A", "service.worker", "worker", "-Q", queues,
            "-c", str(concurrency), "-P", "prefork", "--loglevel", "INFO",
            "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h", "--without-mingle",
            "--without-gossip"]
    if beat:
        argv += ["-B", "--schedule", str(tmp_path / f"{name}-beat-schedule")]
    proc = Process(argv, log_path=tmp_path / f"{name}.log", env=env)
    proc.wait_for_log(" ready.")
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(tmp_path: Path, *, workers: int = 2, threads: int = 8,
                   env: dict | None = None) -> tuple[Process, str]:
    port = free_port()
    argv = [str(VENV_BIN / "gunicorn"), "-w", str(workers), "--threads", str(threads),
            "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "service.wsgi:app"]
    proc = Process(argv, log_path=tmp_path / "gunicorn.log", env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/healthz", timeout=1).ok:
                return proc, base
        except requests.RequestException:
            pass
        if proc.popen.poll() is not None:
            break
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"gunicorn did not start:\n{proc.log()[-3000:]}")
