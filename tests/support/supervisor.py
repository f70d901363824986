"""A real supervisord for the scaling tests: its own config, socket and program directory
in a temporary folder, so the playbook's supervisord layout runs exactly as in production."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.support.processes import VENV_BIN, Process

# What each "worker" runs: the tests count processes, not Celery nodes.
STAND_IN_WORKER = "sleep 600"


class Supervisor:
    def __init__(self, root: Path):
        self.root = root
        self.programs = root / "programs"
        self.programs.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.config = root / "supervisord.conf"
        socket = root / "supervisor.sock"
        self.config.write_text(f"""[unix_http_server]
file={socket}

[supervisord]
logfile={root / 'supervisord.log'}
pidfile={root / 'supervisord.pid'}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{socket}

[include]
files = {self.programs}/*.conf
""")
        self.process: Process | None = None

    def start(self) -> Supervisor:
        self.process = Process([str(VENV_BIN / "supervisord"), "-c", str(self.config)],
                               log_path=self.root / "supervisord.out")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.ctl("pid").returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"supervisord did not start:\n{self.process.log()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=60)

    def running(self, queue: str) -> list[str]:
        """The queue's worker programs supervisord runs now."""
        lines = self.ctl("status").stdout.splitlines()
        return sorted(line.split()[0] for line in lines
                      if line.startswith(f"racine-worker-{queue}-") and " RUNNING " in f" {line} ")

    def pids(self, queue: str) -> dict[str, str]:
        lines = self.ctl("status").stdout.splitlines()
        return {line.split()[0]: line.split("pid ")[1].split(",")[0] for line in lines
                if line.startswith(f"racine-worker-{queue}-") and "pid " in line}

    def settings(self) -> dict:
        """The app settings that point the scaling playbook at this supervisord."""
        return {
            "SCALING_LAYOUT": "supervisord",
            "SUPERVISOR_CONFIG": str(self.config),
            "SUPERVISOR_PROGRAM_DIR": str(self.programs),
            "SCALING_EXTRA_VARS": json.dumps({"worker_command": STAND_IN_WORKER,
                                              "worker_log_dir": str(self.logs),
                                              "worker_stop_seconds": 5}),
        }
