"""The runbook notebooks as committed: no outputs, one `parameters` cell that makes a dry
run the default, a last cell that records the summary, and every runbook the escalation
policy names is one of them, with the parameters its command passes."""

from __future__ import annotations

import shlex

import nbformat
import pytest

from automation import NOTEBOOKS, catalog
from service.alerts import rules

NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_four_runbooks_are_there():
    assert [p.stem for p in NOTEBOOK_PATHS] == ["payment_processing_failure", "queue_overload",
                                                 "stock_sync_failure", "webhook_loop_detected"]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)

    dirty = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    assert dirty == [], f"{path.name}: clear the outputs of cells {dirty}"
    assert notebook.metadata.kernelspec.name == "racine"


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_each_notebook_defaults_to_a_dry_run_and_ends_with_its_summary(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    book = catalog.get(path.stem)

    assert len(tagged) == 1
    assert {"since", "dry_run", "actor", "run_id"} <= set(book.parameters)
    assert book.parameters["dry_run"].default == "True"
    assert notebook.cells[-1].metadata.get("tags") == ["summary"]
    assert notebook.cells[-1].source == "rb.finish()"


def test_parameters_are_typed_from_the_notebooks_defaults():
    book = catalog.get("payment_processing_failure")

    assert book.coerce({"since": "2h", "wait_seconds": "30", "provider": "none"}) == \
        {"since": "2h", "wait_seconds": 30, "provider": None}
    assert catalog.get("queue_overload").coerce({"baseline_workers": "2", "queue": "orders"}) == \
        {"baseline_workers": 2, "queue": "orders"}
    with pytest.raises(catalog.BadParameter, match="takes a int"):
        book.coerce({"wait_seconds": "soon"})
    with pytest.raises(catalog.BadParameter, match="has no parameter 'queue'"):
        book.coerce({"queue": "orders"})
    with pytest.raises(catalog.BadParameter, match="set by the runner"):
        book.coerce({"dry_run": "false"})


def test_every_runbook_the_alerts_name_exists_and_takes_the_parameter_its_command_passes():
    named = {rules.PAYMENT_RUNBOOK, rules.LOOP_RUNBOOK, rules.QUEUE_RUNBOOK, rules.STOCK_RUNBOOK,
             *rules.SIGNAL_RUNBOOKS.values()}
    for runbook in named:
        command = shlex.split(rules.runbook_command(runbook, "orders"))
        assert command[:3] == ["flask", "runbook", "run"] and command[3] == runbook
        book = catalog.get(runbook)
        given = dict(zip(command[5::3], command[6::3], strict=True))
        assert command[4::3] == ["-p"] * len(given)
        book.coerce(given)  # the notice's command is accepted as printed
    assert rules.runbook_command(rules.QUEUE_RUNBOOK, "orders") == \
        "flask runbook run queue_overload -p queue orders"
