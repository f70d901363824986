"""Refund calls to the payment providers, behind one small interface.

`RefundGateway.refund` asks the provider to refund part of a payment, with an
idempotency key the provider honours (Stripe's `Idempotency-Key`, PayPal's
`PayPal-Request-Id`), so asking again after a timeout never refunds twice. It raises
`RefundDeclined` when the provider says no (nothing was refunded) and
`ProviderUnavailable` when the outcome is unknown (timeout, 5xx, network): the caller
keeps the refund pending and may ask again with the same key.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

import requests
import stripe

from service.orders.money import RefundStatus, to_decimal_string, to_stripe


class GatewayError(Exception):
    """Base class for refund gateway errors."""


class RefundDeclined(GatewayError):
    """The provider refused the refund; nothing was refunded."""


class ProviderUnavailable(GatewayError):
    """The provider could not be reached or failed; the refund's outcome is unknown."""


@dataclass(frozen=True)
class ProviderRefund:
    id: str
    status: str  # in this service's terms (money.RefundStatus): succeeded, pending, ...


class RefundGateway(Protocol):
    def refund(self, *, payment_id: str, amount_cents: int, currency: str,
               idempotency_key: str, reason: str | None) -> ProviderRefund: ...


class StripeRefunds:
    """Refunds of PaymentIntents through the `stripe` package, at a configurable API base."""

    _ACCEPTED = {"succeeded", "pending", "requires_action"}

    def __init__(self, *, api_key: str, api_base: str, timeout: float):
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base.rstrip("/")}, max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout))

    def refund(self, *, payment_id: str, amount_cents: int, currency: str,
               idempotency_key: str, reason: str | None) -> ProviderRefund:
        try:
            refund = self._client.v1.refunds.create(
                params={"payment_intent": payment_id,
                        "amount": to_stripe(amount_cents, currency),
                        "metadata": {"reason": (reason or "")[:500]}},
                options={"idempotency_key": idempotency_key})
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise ProviderUnavailable(f"Stripe unreachable: {type(exc).__name__}") from exc
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None) or 0
            if status >= 500 or status in (409, 429):
                raise ProviderUnavailable(f"Stripe answered {status}") from exc
            raise RefundDeclined(f"Stripe refused the refund ({status}: "
                                 f"{getattr(exc, 'code', None) or type(exc).__name__})") from exc
        if refund.status not in self._ACCEPTED:
            raise RefundDeclined(f"Stripe refund {refund.id} is {refund.status}")
        return ProviderRefund(id=refund.id, status=refund.status)


class PayPalRefunds:
    """Refunds of PayPal captures through the REST API (OAuth2 client credentials)."""

    # PayPal's refund statuses that mean it took the refund, in this service's terms.
    _ACCEPTED = {"COMPLETED": RefundStatus.SUCCEEDED, "PENDING": RefundStatus.PENDING}

    def __init__(self, *, api_base: str, client_id: str, client_secret: str, timeout: float,
                 session: requests.Session | None = None):
        self._base = api_base.rstrip("/")
        self._auth = (client_id, client_secret)
        self._timeout = timeout
        self._session = session or requests.Session()
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def refund(self, *, payment_id: str, amount_cents: int, currency: str,
               idempotency_key: str, reason: str | None) -> ProviderRefund:
        body = {"amount": {"value": to_decimal_string(amount_cents, currency),
                           "currency_code": currency.upper()}}
        if reason:
            body["note_to_payer"] = reason[:255]
        response = self._call("POST", f"/v2/payments/captures/{payment_id}/refund", json=body,
                              headers={"PayPal-Request-Id": idempotency_key,
                                       "Prefer": "return=representation"})
        if response.status_code >= 500 or response.status_code == 429:
            raise ProviderUnavailable(f"PayPal answered {response.status_code}")
        if response.status_code >= 400:
            raise RefundDeclined(f"PayPal refused the refund ({response.status_code}: "
                                 f"{_paypal_issue(response)})")
        data = response.json()
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(status, str) or status not in self._ACCEPTED or not data.get("id"):
            raise RefundDeclined("PayPal did not accept the refund")
        return ProviderRefund(id=str(data["id"]), status=self._ACCEPTED[status])

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._access_token()}", **kwargs.pop("headers")}
        try:
            return self._session.request(method, self._base + path, headers=headers,
                                         timeout=self._timeout, **kwargs)
        except requests.RequestException as exc:
            raise ProviderUnavailable(f"PayPal unreachable: {type(exc).__name__}") from exc

    def _access_token(self) -> str:
        with self._lock:
            if self._token and self._token[1] > time.monotonic():
                return self._token[0]
            try:
                response = self._session.post(
                    self._base + "/v1/oauth2/token", auth=self._auth, timeout=self._timeout,
                    data={"grant_type": "client_credentials"})
            except requests.RequestException as exc:
                raise ProviderUnavailable(f"PayPal unreachable: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise ProviderUnavailable(f"PayPal token request answered {response.status_code}")
            data = response.json()
            lifetime = max(int(data.get("expires_in", 300)) - 60, 30)
            self._token = (data["access_token"], time.monotonic() + lifetime)
            return self._token[0]


def _paypal_issue(response: requests.Response) -> str:
    try:
        details = response.json().get("details") or [{}]
        return str(details[0].get("issue") or response.json().get("name") or "error")[:100]
    except ValueError:
        return "error"


def gateways_from_config(config) -> dict[str, RefundGateway]:
    timeout = config["REFUND_PROVIDER_TIMEOUT_SECONDS"]
    return {
        "stripe": StripeRefunds(api_key=config["STRIPE_API_KEY"] or "sk_unset",
                                api_base=config["STRIPE_API_BASE"], timeout=timeout),
        "paypal": PayPalRefunds(api_base=config["PAYPAL_API_BASE"],
                                client_id=config["PAYPAL_CLIENT_ID"] or "",
                                client_secret=config["PAYPAL_CLIENT_SECRET"] or "",
                                timeout=timeout),
    }
