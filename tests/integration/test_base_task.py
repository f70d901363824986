"""The base task owns each run's transaction and counts its outcome.

Task code never commits: the run's writes stand when it returns or ends with Ignore, and
vanish when it raises. Checked on real PostgreSQL, each row read back on a connection of
its own.
"""

from __future__ import annotations

import uuid

import pytest
from celery import shared_task
from celery.exceptions import Ignore, Retry
from sqlalchemy.exc import IntegrityError

from service.extensions import db
from service.orders.models import Customer
from tests.support.db import scalar
from tests.support.metrics import samples, scraped


def _add_customer(email: str) -> None:
    db.session.add(Customer(email=email, name="Task Test"))


@shared_task(name="tests.base_task.returns", ignore_result=True)
def returns(email: str) -> str:
    _add_customer(email)
    return "done"


@shared_task(name="tests.base_task.raises", ignore_result=True)
def raises(email: str) -> None:
    _add_customer(email)
    db.session.flush()
    raise ValueError("the task fails after writing")


@shared_task(name="tests.base_task.ignores", ignore_result=True)
def ignores(email: str) -> None:
    _add_customer(email)
    raise Ignore()


@shared_task(bind=True, name="tests.base_task.conflicts", ignore_result=True,
             autoretry_for=(IntegrityError,), max_retries=2, retry_backoff=False)
def conflicts(self, email: str) -> None:
    # The duplicate e-mail is only refused at the commit, which the base task makes.
    _add_customer(email)


def customers(app, email: str) -> int:
    with app.app_context():
        return scalar("SELECT count(*) FROM customers WHERE email = :email", email=email)


def runs(app, task: str) -> dict[str, float]:
    """Outcomes counted for `task`: {outcome: runs}."""
    counted = samples(scraped(app, flush_own=True), "racine_task_runs_total")
    return {dict(labels)["outcome"]: value for labels, value in counted.items()
            if dict(labels)["task"] == task}


@pytest.fixture
def email():
    return f"{uuid.uuid4().hex[:12]}@example.test"


def test_a_run_that_returns_is_committed_and_counted_as_succeeded(clean, email):
    celery = clean.extensions["celery"]

    celery.tasks["tests.base_task.returns"].apply(args=[email], throw=True)

    assert customers(clean, email) == 1
    assert runs(clean, "tests.base_task.returns") == {"succeeded": 1}


def test_a_run_that_raises_is_rolled_back_and_counted_as_failed(clean, email):
    celery = clean.extensions["celery"]

    with pytest.raises(ValueError):
        celery.tasks["tests.base_task.raises"].apply(args=[email], throw=True)

    assert customers(clean, email) == 0
    assert runs(clean, "tests.base_task.raises") == {"failed": 1}


def test_a_run_that_ends_with_ignore_keeps_its_writes(clean, email):
    celery = clean.extensions["celery"]

    celery.tasks["tests.base_task.ignores"].apply(args=[email])

    assert customers(clean, email) == 1
    assert runs(clean, "tests.base_task.ignores") == {"ignored": 1}


def test_a_commit_refused_with_an_error_the_task_retries_is_retried(clean, email):
    celery = clean.extensions["celery"]
    with clean.app_context():
        _add_customer(email)
        db.session.commit()

    with pytest.raises(Retry) as retry:
        celery.tasks["tests.base_task.conflicts"].apply(args=[email], throw=True)

    assert isinstance(retry.value.exc, IntegrityError)
    assert customers(clean, email) == 1
    assert runs(clean, "tests.base_task.conflicts") == {"retried": 1}


def test_every_task_of_the_service_derives_from_the_base_task(app):
    from service.celery_app import AppTask

    celery = app.extensions["celery"]
    ours = [task for name, task in celery.tasks.items() if not name.startswith("celery.")]

    assert ours
    assert all(isinstance(task, AppTask) for task in ours)
