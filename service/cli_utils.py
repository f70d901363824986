"""Small helpers shared by the Flask CLI commands."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import click

from service.clock import parse_iso, utcnow

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """`90s`, `30m`, `1h`, `2d`, `1w` as a timedelta; ValueError otherwise."""
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30m, 1h or 2d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class Lifetime(click.ParamType):
    """A length of time ahead such as `30d`; converts to a timedelta."""

    name = "duration"

    def convert(self, value, param, ctx) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(click.ParamType):
    """A look-back window such as `90s`, `30m`, `1h`, `2d`; converts to the cut-off time."""

    name = "duration"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return utcnow() - parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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


class TimePoint(click.ParamType):
    """A moment: a look-back like `2d` (that long ago) or an ISO date/time (UTC)."""

    name = "time"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time_point(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def parse_time_point(value: str) -> datetime:
    """`2d` (that long ago) or an ISO 8601 date/time, as naive UTC; ValueError otherwise."""
    text = str(value).strip()
    if _DURATION.match(text):
        return utcnow() - parse_duration(text)
    try:
        return parse_iso(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither a look-back like 2d nor an ISO date/time") \
            from None
