"""Every signal kind the domains raise is one the escalation policy knows: a rule folds
it into its incidents, or the signals rule opens one at the signal's severity with the
runbook for its kind. Read from the source (every `raise_signal(...)` and
`money.Signal(...)` with literal values), so a new kind without a runbook fails here."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from service.alerts.rules import PAYMENT_RUNBOOK, builtin_rules, runbook_for

SERVICE = Path(__file__).resolve().parents[3] / "service"

# The money rule's kinds (docs/money-safety.md): each with its severity and runbook.
MONEY_KINDS = {
    "payment_underpaid": "P1",
    "payment_currency_mismatch": "P1",
    "payment_overpaid": "P2",
    "refund_currency_mismatch": "P1",
    "refund_exceeds_capture": "P1",
}


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def raised_kinds() -> dict[str, set[str]]:
    """kind -> the severities it is raised with, anywhere under service/."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            keywords = {k.arg: _literal(k.value) for k in node.keywords}
            if name == "raise_signal":
                severity, kind = keywords.get("severity"), keywords.get("kind")
            elif name == "Signal" and len(node.args) == 2:
                severity, kind = (_literal(arg) for arg in node.args)
            else:
                continue
            if kind is not None and severity is not None:
                found[kind].add(severity)
    return found


def test_the_scan_finds_the_kinds_the_domains_raise():
    kinds = raised_kinds()

    assert set(MONEY_KINDS) | {"webhook_failure", "slow_job"} <= set(kinds)


def test_money_safety_kinds_keep_their_severity_and_the_payment_runbook():
    kinds = raised_kinds()

    for kind, severity in MONEY_KINDS.items():
        assert kinds[kind] == {severity}, kind
        assert runbook_for(kind, {}) == PAYMENT_RUNBOOK, kind


def test_every_raised_kind_reaches_an_incident_with_its_severity_and_a_runbook_or_review():
    rules = builtin_rules()
    claimed = {kind: rule for rule in rules for kind in rule.signal_kinds}
    catch_all = [rule for rule in rules if getattr(rule, "catch_all_signals", False)]
    assert len(catch_all) == 1
    unknown = []
    for kind, severities in raised_kinds().items():
        rule = claimed.get(kind)
        if rule is not None:
            # A rule that folds the kind in opens its incidents at its own severity.
            assert severities == {rule.severity}, (kind, severities, rule.name)
            assert rule.runbook or rule.severity == "P3", kind  # P3 is listed for review
        elif not runbook_for(kind, {}):
            unknown.append(kind)
    assert not unknown, f"signal kinds with no runbook (add them to SIGNAL_RUNBOOKS): {unknown}"
