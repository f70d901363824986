"""`flask audit ...`: read, verify and archive the audit trail."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

from service.audit import partitions
from service.audit.actor import Actor
from service.audit.archive import archive_month, months_to_archive
from service.audit.exceptions import AuditError, PartitionError
from service.audit.partitions import Month
from service.audit.services import AuditFilter, list_logs
from service.audit.verify import count_rows, read_archive, verify_archive, verify_chain
from service.cli_utils import TimePoint, echo_json, echo_table
from service.extensions import db

cli = AppGroup("audit", help="The tamper-evident audit trail: list, verify, archive.")


def _entity(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    kind, _, ident = value.partition(":")
    return kind or None, ident or None


@cli.command("list")
@click.option("--entity", help="TYPE or TYPE:ID, e.g. order:42.")
@click.option("--action", help="An action such as order.refund.")
@click.option("--actor", help="An actor label (user:a@b.c), or a prefix ending in : or *.")
@click.option("--since", type=TimePoint(), help="From this time: 2d, or an ISO date/time.")
@click.option("--until", type=TimePoint(), help="Before this time: 1h, or an ISO date/time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", help="Continue after a previous page (its next_cursor).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(entity, action, actor, since, until, limit, cursor, as_json):
    """List audit rows, newest first."""
    entity_type, entity_id = _entity(entity)
    try:
        page = list_logs(AuditFilter(entity_type=entity_type, entity_id=entity_id, action=action,
                                     actor=actor, since=since, until=until),
                         limit=limit, cursor=cursor)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cursor") from None
    if as_json:
        echo_json({"items": page.rows, "next_cursor": page.next_cursor})
        return
    rows = [{**row, "entity": f"{row['entity_type']}:{row['entity_id']}"} for row in page.rows]
    echo_table(rows, ["id", "created_at", "action", "entity", "actor", "ip_address", "reason"])
    if page.next_cursor:
        click.echo(f"more: --cursor {page.next_cursor}")


def _echo_report(report, as_json: bool, what: str) -> None:
    if as_json:
        echo_json(report.as_dict())
    elif report.ok:
        click.echo(f"{what}: OK, {report.checked} rows verified"
                   + (f", head {report.last_id} {report.last_hash}" if report.last_id else ""))
    else:
        click.echo(f"{what}: BROKEN at row {report.problem.row_id} ({report.problem.kind}): "
                   f"{report.problem.message}")
    sys.exit(0 if report.ok else 1)


@cli.command("verify")
@click.option("--since", type=TimePoint(), help="Start at this time (2d, or an ISO date) "
              "instead of the beginning; the first row's link is still checked.")
@click.option("--archive", "archive_file", type=click.Path(dir_okay=False),
              help="Verify this archive file instead of the live table.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def verify(since, archive_file, as_json):
    """Walk the hash chain and report the first altered, inserted or missing row.

    Exit 0 when the chain holds, 1 on a break."""
    if archive_file:
        try:
            header, _rows = read_archive(archive_file)
            total = header.get("row_count") or 0
        except (OSError, ValueError, EOFError):
            total = 0
        with _progress(total) as update:
            report = verify_archive(archive_file, progress=update)
        _echo_report(report, as_json, f"archive {archive_file}")
        return
    total = count_rows(since)
    with _progress(total) as update:
        report = verify_chain(since=since, progress=update)
    db.session.rollback()
    _echo_report(report, as_json, "audit trail")


class _progress:
    """A progress bar on stderr, fed with the running count of rows checked."""

    def __init__(self, total: int):
        self._bar = click.progressbar(length=max(total, 1), label="verifying", file=sys.stderr,
                                      show_pos=True)
        self._done = 0

    def __enter__(self):
        self._bar.__enter__()
        return self._update

    def _update(self, checked: int) -> None:
        self._bar.update(checked - self._done)
        self._done = checked

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


@cli.command("archive")
@click.option("--before", "before", required=True, help="Archive every month before this "
              "one (YYYY-MM), oldest first.")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Where the files go (default AUDIT_ARCHIVE_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def archive(before, directory, as_json):
    """Write old months to verified .jsonl.gz files, then drop their partitions.

    Exit 0 when every month was archived, 1 when one failed (it and later months are kept),
    2 when archiving is not possible here (SQLite, or a month not yet over)."""
    try:
        month = Month.parse(before)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--before") from None
    try:
        months = months_to_archive(month)
    except PartitionError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    directory = directory or current_app.config["AUDIT_ARCHIVE_DIR"]
    done, failed = [], None
    actor = Actor.cli()
    for old in months:
        try:
            with _progress(0) as update:
                done.append(archive_month(old, directory=directory, actor=actor, progress=update))
        except AuditError as exc:
            db.session.rollback()
            failed = {"month": str(old), "error": str(exc)}
            break
    if as_json:
        echo_json({"archived": [a.as_dict() for a in done], "failed": failed})
    else:
        for item in done:
            click.echo(f"{item.month}: {item.rows} rows -> {item.path}")
        if not months:
            click.echo(f"no partition before {month}")
        if failed:
            click.echo(f"{failed['month']}: NOT archived: {failed['error']}", err=True)
    sys.exit(1 if failed else 0)


@cli.command("partitions")
@click.option("--ahead", type=click.IntRange(0, 120), help="Months to keep ready "
              "(default AUDIT_PARTITIONS_AHEAD).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def partitions_command(ahead, as_json):
    """Create the monthly partitions ahead (as the beat task does) and list them."""
    if not partitions.partitioned():
        click.echo("the embedded SQLite audit trail is not partitioned", err=True)
        sys.exit(0)
    ahead = current_app.config["AUDIT_PARTITIONS_AHEAD"] if ahead is None else ahead
    created = partitions.ensure_partitions(months_ahead=ahead)
    db.session.commit()
    months = [str(m) for m in partitions.existing()]
    if as_json:
        echo_json({"created": created, "months": months})
    else:
        for name in created:
            click.echo(f"created {name}")
        click.echo("partitions: " + ", ".join(months))
