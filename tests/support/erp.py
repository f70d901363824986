"""The ERP stand-in (scripts/erp_standin.py) as a test fixture, and the app pointed at it.

The stand-in is a real HTTP server on 127.0.0.1; tests fill its catalogue and tell it to
answer the next requests slowly, with a 500, with malformed JSON or with a 401.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text

from scripts.erp_standin import Catalogue, ErpStandIn
from service.extensions import db

TOKEN = "erp-test-token-5f2a"


def erp_settings(standin: ErpStandIn, **overrides) -> dict:
    """The ERP settings of an app (or a worker's environment) that talks to `standin`."""
    return {"ERP_API_URL": standin.url, "ERP_API_TOKEN": TOKEN,
            "ERP_CONNECT_TIMEOUT_SECONDS": 2.0, "ERP_READ_TIMEOUT_SECONDS": 1.0,
            "ERP_PAGE_SIZE": 100, **overrides}


@pytest.fixture
def standin():
    server = ErpStandIn(token=TOKEN, catalogue=Catalogue(), slow_seconds=3.0).start()
    yield server
    server.stop()


@pytest.fixture
def erp_app(clean, standin, monkeypatch):
    """The session app, with empty tables, syncing with the stand-in."""
    for key, value in erp_settings(standin).items():
        monkeypatch.setitem(clean.config, key, value)
    return clean


def add_products(*levels: tuple[str, int]) -> dict[str, int]:
    """Products with these SKUs and stock levels; returns SKU -> id. Commits."""
    ids = {}
    for sku, stock in levels:
        ids[sku] = db.session.execute(text(
            "INSERT INTO products (sku, name, price_cents, stock, updated_at)"
            " VALUES (:sku, :sku, 1000, :stock, now()) RETURNING id"),
            {"sku": sku, "stock": stock}).scalar()
    db.session.commit()
    return ids


def stock_of(sku: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT stock FROM products WHERE sku = :s"), {"s": sku}).scalar()


def erp_items(standin: ErpStandIn, levels: dict[str, int], *, at: datetime | None = None) -> None:
    for sku, quantity in levels.items():
        standin.catalogue.set(sku, quantity, at=at)


def stock_requests(standin: ErpStandIn) -> list[dict]:
    return [r["query"] for r in standin.requests if r["path"] == "/stock"]
