"""Small helpers shared by the Flask CLI commands."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import click

from service.clock import utcnow

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Duration(click.ParamType):
    """A look-back window such as `90s`, `30m`, `1h`, `2d`; converts to the cut-off time."""

    name = "duration"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration like 30m, 1h or 2d", param, ctx)
        amount, unit = int(match.group(1)), match.group(2)
        return utcnow() - timedelta(**{_UNITS[unit]: amount})


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned table; long cells are cut so a row stays on one line."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)))
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _cell(value) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
