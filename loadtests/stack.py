"""The service stack for load runs and benchmarks: a fresh database, gunicorn, workers, beat.

Uses the PostgreSQL and Redis servers named by DATABASE_URL and REDIS_URL (as
`scripts/testenv.py` provides them), in a database and a Redis database of its own that
it removes afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def say(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OWNER_KEY = "racine:test:owner"  # kept: this database belongs to test and load runs
LEASE_KEY = "racine:test:lease"  # expires: the run using it now

# A database is taken when nobody holds its lease and it is empty or already marked as
# a test database; it is emptied and marked in the same atomic step. Anything else,
# such as a developer's own data in an unmarked database, is never touched.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('DBSIZE') > 0 then return 0 end
redis.call('FLUSHDB')
redis.call('SET', KEYS[1], 'racine tests')
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""


class RedisClaim:
    """A Redis database this run marked as its own: `url`, `reset()`, `release()`."""

    def __init__(self, url: str, token: str, ttl: int):
        self.url = url
        self._token = token
        self._ttl = ttl
        self._client = redis.Redis.from_url(url)

    def reset(self) -> None:
        """Empty the database, keeping it marked and leased."""
        pipe = self._client.pipeline(transaction=True)
        pipe.flushdb()
        pipe.set(OWNER_KEY, "racine tests")
        pipe.set(LEASE_KEY, self._token, ex=self._ttl)
        pipe.execute()

    def release(self) -> None:
        """Give the database back to later runs (it stays marked as a test database)."""
        if self._client.get(LEASE_KEY) == self._token.encode():
            self._client.delete(LEASE_KEY)
        self._client.close()


def claim_redis_db(base_url: str, *, ttl: int = 6 * 3600) -> RedisClaim:
    """A database of the Redis at `base_url` for this run only.

    Sessions empty their database and run workers that consume its queues, so two runs
    sharing one would steal each other's messages; `TEST_REDIS_DB` asks for one number.
    """
    parts = urlsplit(base_url)
    wanted = os.environ.get("TEST_REDIS_DB")
    token = uuid.uuid4().hex
    for number in [int(wanted)] if wanted else range(1, 16):
        url = urlunsplit((parts.scheme, parts.netloc, f"/{number}", "", ""))
        client = redis.Redis.from_url(url)
        try:
            if client.eval(_CLAIM, 2, OWNER_KEY, LEASE_KEY, token, ttl):
                return RedisClaim(url, token, ttl)
        finally:
            client.close()
    raise RuntimeError(f"no free Redis database at {parts.hostname}:{parts.port}: each is "
                       "in use by a run, or holds data this project did not mark as its own")


class Stack:
    """Start with `with Stack(...) as stack:`; everything stops and is removed on exit."""

    def __init__(self, *, web_workers: int = 2, web_threads: int = 8, webhook_workers: int = 2,
                 extra_env: dict | None = None, with_orders: bool = True, with_beat: bool = True,
                 with_workers: bool = True, webhook_pool: str = "prefork"):
        self.web_workers = web_workers
        self.web_threads = web_threads
        self.webhook_workers = webhook_workers
        self.webhook_pool = webhook_pool
        self.extra_env = extra_env or {}
        self.with_orders = with_orders
        self.with_beat = with_beat
        self.with_workers = with_workers
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="racine-stack-"))
        self.env: dict[str, str] = {}
        self.url = ""
        self._cleanup: list = []

    # -- set-up ---------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self._prepare()
            self._start_processes()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _prepare(self) -> None:
        base_db = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
        base_db = base_db.replace("postgresql+psycopg://", "postgresql://", 1)
        if not base_db.startswith("postgresql://"):
            raise SystemExit("stack: load runs need PostgreSQL in DATABASE_URL")
        name = f"racine_load_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base_db, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(base_db)
        database_url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
        self._cleanup.append(lambda: _drop_database(base_db, name))
        claim = claim_redis_db(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        redis_url = claim.url
        self._cleanup.append(claim.release)
        from loadtests.signing import make_key_and_certificate

        key_path, cert_path = make_key_and_certificate(self.tmp)
        self.paypal_key_path = key_path
        self.env = {
            **os.environ,
            "RACINE_DOTENV": "/nonexistent/.env",
            # Load runs sign with the built-in development secrets (or those exported).
            "RACINE_ENV": "development",
            "RACINE_INSTANCE_PATH": str(self.tmp),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PAYPAL_CERT_PATH": cert_path,
            "LOG_LEVEL": "WARNING",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            **self.extra_env,
        }
        say(f"database {name}, Redis {redis_url.rsplit('/', 1)[-1]}")
        self.flask("db", "upgrade")

    def flask(self, *args: str) -> str:
        result = subprocess.run([str(BIN / "flask"), "--app", "service", *args], env=self.env,
                                cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"stack: flask {' '.join(args)} failed:\n{result.stderr[-2000:]}")
        return result.stdout

    def _start_processes(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.spawn("web", [str(BIN / "gunicorn"), "-w", str(self.web_workers), "--threads",
                           str(self.web_threads), "-b", f"127.0.0.1:{port}",
                           "service.wsgi:app"])
        if self.with_workers:
            self.start_webhook_worker()
            if self.with_orders:
                self.spawn("worker-orders", _worker("orders", 1, 1))
            self.spawn("worker-default", _worker("default,erp", 1, 1))
        if self.with_beat:
            self.spawn("beat", [str(BIN / "celery"), "-A", "service.worker", "beat",
                                "--loglevel", "WARNING", "--schedule",
                                str(self.tmp / "beat-schedule")])
        self.wait_ready()

    def start_webhook_worker(self, concurrency: int | None = None) -> subprocess.Popen:
        return self.spawn("worker-webhooks",
                          _worker("webhooks", concurrency or self.webhook_workers, 4,
                                  self.webhook_pool))

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, proc))
        return proc

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        while time.monotonic() < deadline:
            for name, proc in self.processes:
                if proc.poll() is not None:
                    raise SystemExit(f"stack: {name} exited:\n{self.log(name)[-2000:]}")
            try:
                web_ok = requests.get(self.url + "/readyz", timeout=1).ok
            except requests.RequestException:
                web_ok = False
            consumers = client.zcard("racine:queue:consumers:webhooks")
            if web_ok and (consumers or not self.with_workers):
                say(f"ready at {self.url}")
                return
            time.sleep(0.3)
        raise SystemExit("stack: not ready in time")

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> None:
        for proc_name, proc in self.processes:
            if proc_name == name and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        self.processes = [(n, p) for n, p in self.processes if n != name or p.poll() is None]

    # -- tear-down ------------------------------------------------------------------
    def __exit__(self, *_exc) -> None:
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _name, proc in self.processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for step in reversed(self._cleanup):
            try:
                step()
            except Exception as exc:
                say(f"clean-up step failed: {exc}")
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


def _worker(queues: str, concurrency: int, prefetch: int, pool: str = "prefork") -> list[str]:
    return [str(BIN / "celery"), "-A", "service.worker", "worker", "-Q", queues, "-c",
            str(concurrency), "--prefetch-multiplier", str(prefetch), "--pool", pool,
            "--loglevel", "WARNING",
            "-n", f"{queues.split(',')[0]}-{uuid.uuid4().hex[:6]}@%h", "--without-mingle",
            "--without-gossip"]


def _drop_database(base_db: str, name: str) -> None:
    with psycopg.connect(base_db, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
