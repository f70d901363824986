"""What a runbook notebook keeps while it runs: the app, the window, what it found, what
it did, and the JSON summary its last cell shows.

A notebook starts with `rb = Runbook(...)` from its parameters and ends with
`rb.finish()`. Actions go through the domains' own service functions (audited where they
are critical actions) with `rb.actor` and `rb.reason`; `rb.act(...)` only notes them.
"""

from __future__ import annotations

import json
from datetime import datetime

from service.audit.actor import Actor
from service.cli_utils import parse_duration
from service.clock import iso, utcnow

SUMMARY_MIME = "application/json"


class Runbook:
    def __init__(self, name: str, *, since: str = "1h", dry_run: bool = True,
                 actor: str | None = None, run_id: int | None = None, **parameters):
        from service import create_app

        self.name = name
        self.dry_run = bool(dry_run)
        self.run_id = run_id
        self.window = since
        self.until = utcnow()
        self.since = self.until - parse_duration(since)
        self.parameters = parameters
        self.actor = Actor(label=actor) if actor else Actor.cli()
        self.app = create_app()
        self._context = self.app.app_context()
        self._context.push()
        self.findings: list[dict] = []
        self.notes: list[str] = []
        self.planned: list[str] = []
        self.actions: list[dict] = []
        self.next_steps: list[str] = []
        self.figures: dict = {}
        self.decision: str | None = None
        self.resolved = False

    @property
    def reason(self) -> str:
        run = f" run #{self.run_id}" if self.run_id else ""
        return f"runbook {self.name}{run}"

    @property
    def config(self):
        return self.app.config

    def find(self, text: str, **figures) -> None:
        """A problem the diagnosis found."""
        self.findings.append({"finding": text, **_plain(figures)})
        print(f"PROBLEM: {text}")

    def note(self, text: str) -> None:
        """Something seen that is not a problem by itself."""
        self.notes.append(text)
        print(f"ok: {text}")

    def figure(self, **figures) -> None:
        self.figures.update(_plain(figures))

    def decide(self, text: str) -> None:
        self.decision = text
        print(f"DECISION: {text}")

    def plan(self, text: str) -> None:
        """What execute mode would do; a dry run stops here."""
        self.planned.append(text)
        print(f"dry run, not done: {text}")

    def act(self, action: str, **details) -> None:
        """An action this run took (through a service function)."""
        self.actions.append({"action": action, **_plain(details)})
        print(f"DONE: {action} {json.dumps(_plain(details), sort_keys=True)}")

    def next_step(self, text: str) -> None:
        self.next_steps.append(text)

    @property
    def problem(self) -> bool:
        return bool(self.findings)

    def commit(self) -> None:
        from service.extensions import db

        db.session.commit()

    def summary(self) -> dict:
        return {
            "runbook": self.name, "run_id": self.run_id, "dry_run": self.dry_run,
            "window": {"since": iso(self.since), "until": iso(self.until), "length": self.window},
            "parameters": _plain(self.parameters), "actor": self.actor.label,
            "problem": self.problem, "resolved": self.problem and self.resolved,
            "findings": self.findings, "notes": self.notes, "decision": self.decision,
            "planned": self.planned, "actions": self.actions, "next_steps": self.next_steps,
            "figures": self.figures,
        }

    def finish(self) -> None:
        """Show the summary as JSON (what `flask runbook run` reads back) and release the
        database session. Returns nothing, so the cell shows the summary once."""
        from IPython.display import display

        from service.extensions import db

        db.session.rollback()
        db.session.remove()
        data = json.loads(json.dumps(self.summary(), default=str))
        display({SUMMARY_MIME: data, "text/plain": json.dumps(data, indent=2)}, raw=True)


def _plain(value):
    """JSON-ready: datetimes as ISO text, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def table(rows: list[dict], columns: list[str] | None = None, limit: int = 20) -> None:
    """Print rows as an aligned table (the CLI's table)."""
    from service.cli_utils import echo_table

    if not rows:
        print("(none)")
        return
    columns = columns or list(rows[0])
    echo_table([{k: (iso(v) if isinstance(v, datetime) else v) for k, v in r.items()}
                for r in rows[:limit]], columns)
    if len(rows) > limit:
        print(f"... and {len(rows) - limit} more")
