"""tests/unit/ holds only tests that need no server: one that asks for the database,
Redis or the app fails at once, and belongs in tests/integration/."""

from __future__ import annotations

import pytest

SERVER_FIXTURES = {"service_env", "redis_claim", "app", "clean", "ctx", "client", "build_app"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    if wanted:
        pytest.fail(f"{item.nodeid} uses {sorted(wanted)}: tests that need PostgreSQL or "
                    "Redis live in tests/integration/", pytrace=False)
