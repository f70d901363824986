"""The ERP client against a real local HTTP server: each way the ERP can fail becomes one
clear exception whose message names the status, never the token or the ERP's words."""

from __future__ import annotations

import socket
from datetime import datetime

import pytest

from service.erp.client import HttpErpClient
from service.erp.exceptions import (
    ErpBadResponse,
    ErpCredentialsRejected,
    ErpNotConfigured,
    ErpServerError,
    ErpTimeout,
    ErpUnavailable,
)
from tests.support.erp import TOKEN, erp_items, erp_settings, stock_requests

AT = datetime(2026, 3, 1, 12, 0, 0)


def _client(server, **overrides) -> HttpErpClient:
    return HttpErpClient.from_config(erp_settings(server, **overrides))


def test_health_and_stock_pages_are_read_with_the_token(standin):
    erp_items(standin, {"SKU-A": 3, "SKU-B": 0, "SKU-C": 12}, at=AT)

    with _client(standin, ERP_PAGE_SIZE=2) as client:
        assert client.health()["status"] == "ok"
        pages = list(client.stock_pages(since=None))

    assert [p.number for p in pages] == [1, 2]
    assert [(i.sku, i.quantity, i.updated_at) for p in pages for i in p.items] == [
        ("SKU-A", 3, AT), ("SKU-B", 0, AT), ("SKU-C", 12, AT)]
    assert [q.get("page") for q in stock_requests(standin)] == ["1", "2"]


def test_since_is_sent_as_iso_utc(standin):
    with _client(standin) as client:
        list(client.stock_pages(since=AT))

    assert stock_requests(standin)[0]["since"] == "2026-03-01T12:00:00Z"


@pytest.mark.parametrize(("kind", "error", "says"), [
    ("500", ErpServerError, "answered 500"),
    ("503", ErpServerError, "answered 503"),
    ("401", ErpCredentialsRejected, "answered 401"),
    ("malformed", ErpBadResponse, "not JSON"),
    ("slow", ErpTimeout, "timed out"),
])
def test_each_failure_is_one_clear_exception(standin, kind, error, says):
    standin.fail_next(kind)

    with _client(standin, ERP_READ_TIMEOUT_SECONDS=0.5) as client, pytest.raises(error) as caught:
        list(client.stock_pages(since=None))

    assert says in str(caught.value)
    assert TOKEN not in str(caught.value) and "upstream" not in str(caught.value)


def test_a_wrong_token_is_refused_and_not_retryable(standin):
    with _client(standin, ERP_API_TOKEN="wrong") as client, \
            pytest.raises(ErpCredentialsRejected) as caught:
        client.health()

    assert not isinstance(caught.value, ErpUnavailable)
    assert "ERP_API_TOKEN" in str(caught.value)


def test_an_erp_nobody_listens_for_is_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HttpErpClient(base_url=f"http://127.0.0.1:{port}", token=TOKEN,
                           connect_timeout=1, read_timeout=1, page_size=10)

    with pytest.raises(ErpUnavailable, match="unreachable"):
        client.health()


def test_items_that_break_the_contract_are_refused(standin):
    standin.catalogue.set("SKU-A", "lots", at=AT)  # type: ignore[arg-type]

    with _client(standin) as client, pytest.raises(ErpBadResponse, match="quantity"):
        list(client.stock_pages(since=None))


def test_no_url_means_no_erp():
    with pytest.raises(ErpNotConfigured):
        HttpErpClient.from_config({"ERP_API_URL": None})
