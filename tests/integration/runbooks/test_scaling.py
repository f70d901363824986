"""The scaling playbook against a real supervisord: it sets the worker count, a second
run changes nothing, --check only says what would change, and scaling down works."""

from __future__ import annotations

import json
import subprocess

from tests.support.db import rows
from tests.support.processes import VENV_BIN


def _scale(app, *args):
    with app.app_context():
        result = app.test_cli_runner().invoke(args=["workers", "scale", *args, "--json"])
    return result.exit_code, (json.loads(result.output) if result.output.startswith("{") else
                              result.output)


def test_the_playbook_scales_supervisord_programs_idempotently(clean, build_app, supervisor):
    settings = supervisor.settings()
    log_dir = supervisor.logs / "workers"  # not there yet, as /var/log/racine on a new host
    settings["SCALING_EXTRA_VARS"] = json.dumps({**json.loads(settings["SCALING_EXTRA_VARS"]),
                                                 "worker_log_dir": str(log_dir)})
    app = build_app(settings)

    code, preview = _scale(app, "erp", "3", "--check")
    assert code == 0 and preview["changed"] is True, preview
    assert not log_dir.exists()  # --check creates nothing

    code, first = _scale(app, "erp", "3", "--reason", "backlog")
    assert code == 0, first
    assert (first["before"], first["after"], first["changed"]) == (0, 3, True)
    assert supervisor.running("erp") == ["racine-worker-erp-01", "racine-worker-erp-02",
                                         "racine-worker-erp-03"]
    pids = supervisor.pids("erp")
    assert sorted(p.name for p in log_dir.iterdir()) == [
        f"racine-worker-erp-0{n}.log" for n in (1, 2, 3)]

    code, again = _scale(app, "erp", "3")
    assert code == 0 and again["changed"] is False
    assert supervisor.pids("erp") == pids  # nothing restarted

    code, preview = _scale(app, "erp", "5", "--check")
    assert code == 0 and (preview["before"], preview["after"], preview["changed"]) == (3, 5, True)
    assert supervisor.running("erp") == sorted(pids)  # --check changed nothing

    code, down = _scale(app, "erp", "1")
    assert code == 0 and (down["before"], down["after"], down["changed"]) == (3, 1, True)
    assert supervisor.running("erp") == ["racine-worker-erp-01"]
    # The process kept is the one that ran before: scaling down stops only the extra ones.
    assert supervisor.pids("erp") == {"racine-worker-erp-01": pids["racine-worker-erp-01"]}

    with app.app_context():
        audited = rows("SELECT entity_id, metadata, reason FROM audit_logs"
                       " WHERE action = 'workers.scale' ORDER BY id")
    assert [(r["entity_id"], json.loads(r["metadata"])["after"]) for r in audited] == \
        [("erp", {"workers": 3}), ("erp", {"workers": 1})]


def test_a_queue_that_does_not_exist_is_refused_before_ansible_runs(clean):
    code, output = _scale(clean, "nosuchqueue", "2")
    assert code == 3
    assert "no queue 'nosuchqueue'" in output


def test_ansible_lint_passes_on_the_playbooks():
    result = subprocess.run([str(VENV_BIN / "ansible-lint"), "--offline", "playbooks/"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_embedded_layout_grows_and_shrinks_the_pool_of_the_running_worker(
        clean, build_app, tmp_path, processes):
    from tests.support.processes import start_worker

    processes.append(start_worker(tmp_path, queues="erp", concurrency=1, beat=False))
    app = build_app({"SCALING_LAYOUT": "embedded"})

    code, grown = _scale(app, "erp", "3")
    assert code == 0, grown
    assert (grown["before"], grown["after"], grown["changed"]) == (1, 3, True)
    code, shrunk = _scale(app, "erp", "2")
    assert code == 0 and (shrunk["before"], shrunk["after"]) == (3, 2)
    # Asked for none, the running worker keeps one process, and says so.
    code, floor = _scale(app, "erp", "0")
    assert code == 0 and (floor["before"], floor["after"]) == (2, 1)
