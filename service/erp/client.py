"""The ERP's HTTP API, behind one small interface.

    GET /health                        -> 200 {"status": "ok", ...}
    GET /stock?since=ISO&page=N&per_page=M
        -> 200 {"items": [{"sku": str, "quantity": int, "updated_at": ISO}, ...],
                "next_page": N+1 or null}

Every request carries `Authorization: Bearer ERP_API_TOKEN` and its own connect and read
timeouts. Each failure becomes one of the domain's exceptions, with a message that
names the status or the error class and never the token or the ERP's own words (an
answer may carry anything).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import requests

from service.clock import parse_iso
from service.erp.exceptions import (
    ErpBadResponse,
    ErpCredentialsRejected,
    ErpNotConfigured,
    ErpServerError,
    ErpTimeout,
    ErpUnavailable,
)

# A page count beyond this means the ERP keeps handing out next pages: stop, and fail.
MAX_PAGES = 10_000


@dataclass(frozen=True)
class StockItem:
    sku: str
    quantity: int
    updated_at: datetime  # naive UTC


@dataclass(frozen=True)
class StockPage:
    number: int
    items: list[StockItem]


class ErpClient(Protocol):
    def health(self) -> dict: ...

    def stock_pages(self, *, since: datetime | None) -> Iterator[StockPage]: ...


class HttpErpClient:
    """The ERP over HTTP with `requests`; one session, closed with the client."""

    def __init__(self, *, base_url: str, token: str, connect_timeout: float,
                 read_timeout: float, page_size: int, session: requests.Session | None = None):
        self._base = base_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._page_size = page_size
        self._session = session or requests.Session()
        self._session.headers.update({"Authorization": f"Bearer {token}",
                                      "Accept": "application/json",
                                      "User-Agent": "racine-erp-sync/1"})

    @classmethod
    def from_config(cls, config) -> HttpErpClient:
        if not config.get("ERP_API_URL"):
            raise ErpNotConfigured("ERP_API_URL is not set: there is no ERP to sync with")
        return cls(base_url=config["ERP_API_URL"], token=config["ERP_API_TOKEN"] or "",
                   connect_timeout=config["ERP_CONNECT_TIMEOUT_SECONDS"],
                   read_timeout=config["ERP_READ_TIMEOUT_SECONDS"],
                   page_size=config["ERP_PAGE_SIZE"])

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpErpClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def health(self) -> dict:
        """The ERP's health answer; raises when it is unreachable or refuses the token."""
        data = self._get("/health", {})
        if not isinstance(data, dict):
            raise ErpBadResponse("ERP /health answered JSON that is not an object")
        return data

    def stock_pages(self, *, since: datetime | None) -> Iterator[StockPage]:
        """Stock changed at or after `since` (everything when None), a page at a time;
        each page is fetched only when the previous one has been handled."""
        page = 1
        while True:
            params = {"page": page, "per_page": self._page_size}
            if since is not None:
                params["since"] = since.isoformat() + "Z"
            data = self._get("/stock", params)
            items, next_page = _parse_page(data)
            yield StockPage(number=page, items=items)
            if next_page is None:
                return
            if next_page <= page or page >= MAX_PAGES:
                raise ErpBadResponse(f"ERP /stock paging went wrong after page {page} "
                                     f"(next_page {next_page})")
            page = next_page

    def _get(self, path: str, params: dict):
        try:
            response = self._session.get(self._base + path, params=params,
                                         timeout=self._timeout, allow_redirects=False)
        except requests.Timeout as exc:
            raise ErpTimeout(f"ERP {path} timed out ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise ErpUnavailable(f"ERP {path} unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if status in (401, 403):
            raise ErpCredentialsRejected(f"ERP {path} answered {status}: the token was refused "
                                         "(check ERP_API_TOKEN)")
        if status >= 500 or status == 429:
            raise ErpServerError(f"ERP {path} answered {status}")
        if status != 200:
            raise ErpBadResponse(f"ERP {path} answered {status}")
        try:
            return response.json()
        except ValueError:
            raise ErpBadResponse(f"ERP {path} answered 200 with a body that is not JSON") \
                from None


def _parse_page(data) -> tuple[list[StockItem], int | None]:
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ErpBadResponse("ERP /stock answered JSON without an `items` list")
    next_page = data.get("next_page")
    if next_page is not None and (isinstance(next_page, bool) or not isinstance(next_page, int)):
        raise ErpBadResponse("ERP /stock answered a `next_page` that is not a number")
    return [_parse_item(n, raw) for n, raw in enumerate(data["items"])], next_page


def _parse_item(n: int, raw) -> StockItem:
    if not isinstance(raw, dict):
        raise ErpBadResponse(f"ERP /stock item {n} is not an object")
    sku, quantity, updated = raw.get("sku"), raw.get("quantity"), raw.get("updated_at")
    if not isinstance(sku, str) or not sku.strip() or len(sku) > 64:
        raise ErpBadResponse(f"ERP /stock item {n} has no valid `sku`")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ErpBadResponse(f"ERP /stock item {n} has no whole-number `quantity`")
    return StockItem(sku=sku.strip(), quantity=quantity, updated_at=_parse_time(n, updated))


def _parse_time(n: int, value) -> datetime:
    if not isinstance(value, str):
        raise ErpBadResponse(f"ERP /stock item {n} has no `updated_at`")
    try:
        return parse_iso(value)
    except ValueError:
        raise ErpBadResponse(f"ERP /stock item {n} has an `updated_at` that is not ISO 8601") \
            from None
