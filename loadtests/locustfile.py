"""Locust scenarios: payment providers delivering webhooks to Racine.

Select a scenario by user class (or by its tag): `SteadyUser` (steady), `FlashSaleUser`
(flash_sale), `DuplicateStormUser` (duplicate_storm), `BadActorUser` (bad_actors). The
total rate is shared by the users: LOADTEST_RATE events per minute (default 500).

Started by `python -m loadtests.run`, which brings the stack up and sets:
  LOADTEST_ORDER_IDS    "first-last" range of seeded orders events pay for
  LOADTEST_PAYPAL_KEY   the key whose certificate the stack pins (PAYPAL_CERT_PATH)
  LOADTEST_REPORT       where the end-to-end check writes its JSON report
When Locust quits, the end-to-end check (loadtests/check.py) counts in the database
that every accepted event was processed exactly once, and sets the exit code.
"""

from __future__ import annotations

import os
import random
import time

import gevent
from locust import HttpUser, events, tag, task

from loadtests import signing
from loadtests.ledger import LEDGER

RATE_PER_MINUTE = float(os.environ.get("LOADTEST_RATE", "500"))
USERS = max(1, int(os.environ.get("LOADTEST_USERS", "4")))
FLASH_START = float(os.environ.get("LOADTEST_FLASH_START", "20"))
FLASH_SECONDS = float(os.environ.get("LOADTEST_FLASH_SECONDS", "60"))
FLASH_FACTOR = float(os.environ.get("LOADTEST_FLASH_FACTOR", "5"))
STRIPE_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_racine_dev_secret").split(",")[0]
PAYPAL_WEBHOOK_ID = os.environ.get("PAYPAL_WEBHOOK_ID", "WH-RACINE-DEV")
PAYPAL_CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-LOADTEST"
PAYPAL_SHARE = float(os.environ.get("LOADTEST_PAYPAL_SHARE", "0.3"))
REDELIVERY_SHARE = float(os.environ.get("LOADTEST_REDELIVERY_SHARE", "0.3"))
BAD_SHARE = float(os.environ.get("LOADTEST_BAD_SHARE", "0.3"))


def _order_range() -> tuple[int, int]:
    first, _, last = os.environ.get("LOADTEST_ORDER_IDS", "1-20").partition("-")
    return int(first), int(last or first)


ORDERS = _order_range()
_PAYPAL_KEY = None


def _paypal_key():
    global _PAYPAL_KEY
    if _PAYPAL_KEY is None and os.environ.get("LOADTEST_PAYPAL_KEY"):
        _PAYPAL_KEY = signing.load_private_key(os.environ["LOADTEST_PAYPAL_KEY"])
    return _PAYPAL_KEY


def paced(multiplier=lambda elapsed: 1.0):
    """A wait_time giving each user an equal share of the total rate, times `multiplier`.

    Like Locust's constant_throughput, but the rate may change with the run's age.
    """
    def wait_time(user) -> float:
        now = time.monotonic()
        started = LEDGER.started_at or now
        per_user = RATE_PER_MINUTE / 60.0 / USERS * multiplier(now - started)
        due = getattr(user, "_next_due", now) + 1.0 / per_user
        user._next_due = max(due, now)
        return max(0.0, user._next_due - now)
    return wait_time


class _Provider(HttpUser):
    abstract = True

    def on_start(self):
        LEDGER.start()

    def deliver_new(self) -> None:
        """A correctly signed payment for a seeded order; Stripe or PayPal."""
        order_id = random.randint(*ORDERS)
        amount = random.randint(500, 20000)
        key = _paypal_key()
        if key is not None and random.random() < PAYPAL_SHARE:
            event_id, body, headers, ref = signing.paypal_capture(
                order_id, amount, private_key=key, webhook_id=PAYPAL_WEBHOOK_ID,
                cert_url=PAYPAL_CERT_URL)
            provider = "paypal"
        else:
            event_id, body, headers, ref = signing.stripe_payment(order_id, amount,
                                                                  secret=STRIPE_SECRET)
            provider = "stripe"
        self._post(provider, body, headers, expect={"stored", "duplicate"},
                   record=(provider, event_id, ref, body))

    def redeliver(self) -> None:
        """A provider retry: an event already sent, with a fresh signature."""
        sent = LEDGER.random_sent()
        if sent is None:
            self.deliver_new()
            return
        provider, _event_id, _ref, body = sent
        if provider == "paypal":
            headers = signing.paypal_headers(body, private_key=_paypal_key(),
                                             webhook_id=PAYPAL_WEBHOOK_ID, cert_url=PAYPAL_CERT_URL)
        else:
            headers = signing.stripe_headers(body, secret=STRIPE_SECRET)
        self._post(provider, body, headers, expect={"duplicate", "stored"}, redelivery=True)

    def forge(self) -> None:
        """An attacker: a wrong secret, a stale timestamp or a tampered body."""
        order_id = random.randint(*ORDERS)
        event_id, body, _, ref = signing.stripe_payment(order_id, 100, secret=STRIPE_SECRET)
        kind = random.choice(("wrong_secret", "stale", "tampered"))
        if kind == "wrong_secret":
            headers = signing.stripe_headers(body, secret="whsec_not_the_real_one")
        elif kind == "stale":
            headers = signing.stripe_headers(body, secret=STRIPE_SECRET,
                                             timestamp=int(time.time()) - 3600)
        else:
            headers = signing.stripe_headers(body, secret=STRIPE_SECRET)
            body = body.replace(b'"amount": 100', b'"amount": 1')
        LEDGER.forged(event_id, ref)
        with self.client.post("/webhooks/stripe", data=body, headers=headers,
                              name=f"/webhooks/stripe [forged: {kind}]",
                              catch_response=True) as response:
            if response.status_code == 400:
                response.success()
                LEDGER.answer("rejected")
            else:
                response.failure(f"forged delivery answered {response.status_code}")
                LEDGER.answer("unexpected")

    def _post(self, provider, body, headers, *, expect, record=None, redelivery=False):
        name = f"/webhooks/{provider}" + (" [redelivery]" if redelivery else "")
        with self.client.post(f"/webhooks/{provider}", data=body, headers=headers, name=name,
                              catch_response=True) as response:
            status = None
            if response.status_code == 200:
                status = (response.json() or {}).get("status")
            if status in expect:
                response.success()
                LEDGER.answer(status)
                if record is not None:
                    LEDGER.accepted(*record)
            else:
                response.failure(f"answered {response.status_code} {response.text[:80]}")
                LEDGER.answer("unexpected")


@tag("steady")
class SteadyUser(_Provider):
    """Signed Stripe and PayPal payments at a constant rate."""

    wait_time = paced()

    @task
    def payment(self):
        self.deliver_new()


@tag("flash_sale")
class FlashSaleUser(_Provider):
    """The steady rate, with FLASH_FACTOR times as much for a minute on top."""

    wait_time = paced(lambda elapsed: FLASH_FACTOR
                      if FLASH_START <= elapsed < FLASH_START + FLASH_SECONDS else 1.0)

    @task
    def payment(self):
        self.deliver_new()


@tag("duplicate_storm")
class DuplicateStormUser(_Provider):
    """A share of every delivery (default 30 %) is a redelivery of an event already sent."""

    wait_time = paced()

    @task
    def delivery(self):
        if random.random() < REDELIVERY_SHARE:
            self.redeliver()
        else:
            self.deliver_new()


@tag("bad_actors")
class BadActorUser(_Provider):
    """Genuine payments with forged ones mixed in (default 30 %): each forged one gets 400."""

    wait_time = paced()

    @task
    def delivery(self):
        if random.random() < BAD_SHARE:
            self.forge()
        else:
            self.deliver_new()


@events.test_start.add_listener
def _sample_depth(environment, **_kwargs):
    LEDGER.start()
    gevent.spawn(LEDGER.sample_depth_forever)


@events.quitting.add_listener
def _check(environment, **_kwargs):
    from loadtests.check import run_check

    scenario = os.environ.get("LOADTEST_SCENARIO", "steady")
    ok = run_check(LEDGER, scenario=scenario, report_path=os.environ.get("LOADTEST_REPORT"))
    if not ok:
        environment.process_exit_code = 1
