"""The registry of critical actions, and the markers that keep it complete.

Every action the audit trail records is registered here with what it is; `record`
refuses an unregistered action. Domain service modules mark each public function
`@critical(action)` (it changes money, stock or access, and writes that action's audit
row) or `@not_critical(why)` (it changes nothing an auditor asks about, or its record is
kept elsewhere; the reason says where). A test requires a marker on every public
function of the modules listed in `AUDITED_MODULES`, and drives every registered action
through its entry points: a new money or stock function without a marker, or a new
action without a coverage test, fails the suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class ActionSpec:
    name: str
    entity_type: str
    description: str
    entry_points: tuple[str, ...]


_ACTIONS: dict[str, ActionSpec] = {}

# Service modules whose public functions must each carry a marker.
AUDITED_MODULES = [
    "service.orders.services",
    "service.orders.refunds",
    "service.accounts.services",
    "service.webhooks.replay",
    "service.alerts.services",
    "service.erp.services",
    "service.runbooks.services",
]


def register_action(name: str, *, entity_type: str, description: str,
                    entry_points: tuple[str, ...] = ()) -> ActionSpec:
    """Declare an action (`<entity>.<verb>`); other domains call this from their services."""
    spec = ActionSpec(name, entity_type, description, tuple(entry_points))
    existing = _ACTIONS.get(name)
    if existing is not None and existing != spec:
        raise ValueError(f"audit action {name!r} registered twice with different specs")
    _ACTIONS[name] = spec
    return spec


def action(name: str) -> ActionSpec | None:
    return _ACTIONS.get(name)


def actions() -> dict[str, ActionSpec]:
    return dict(sorted(_ACTIONS.items()))


def critical(action_name: str) -> Callable[[F], F]:
    """Mark a service function as one that performs `action_name` and audits it."""
    if action_name not in _ACTIONS:
        raise ValueError(f"register audit action {action_name!r} before marking a function")

    def mark(func: F) -> F:
        func.__audit_action__ = action_name
        return func
    return mark


def not_critical(why: str) -> Callable[[F], F]:
    """Mark a public service function as outside the audit trail, saying why."""
    if not why.strip():
        raise ValueError("say why the function is not critical")

    def mark(func: F) -> F:
        func.__audit_exempt__ = why
        return func
    return mark


def marker(func: Callable) -> str | None:
    """The function's marker (`critical:<action>` or `exempt:<why>`), or None."""
    if getattr(func, "__audit_action__", None):
        return f"critical:{func.__audit_action__}"
    if getattr(func, "__audit_exempt__", None):
        return f"exempt:{func.__audit_exempt__}"
    return None


# ---- the actions of the governance domains -------------------------------------------
# Later domains (incidents, ERP, runbooks) register theirs from their own services.

register_action(
    "order.refund", entity_type="order",
    description="A refund, full or partial, recorded or changing status: asked by an "
                "operator, or reported by a provider (a PayPal reversal is one too)",
    entry_points=("POST /api/admin/orders/<id>/refunds", "webhook stripe charge.refunded",
                  "webhook stripe charge.refund.updated", "webhook stripe refund.created",
                  "webhook stripe refund.updated", "webhook stripe refund.failed",
                  "webhook paypal PAYMENT.CAPTURE.REFUNDED",
                  "webhook paypal PAYMENT.CAPTURE.REVERSED"))
register_action(
    "product.stock_adjust", entity_type="product",
    description="A manual (or ERP) change of a product's stock",
    entry_points=("POST /api/admin/products/<id>/stock-adjustments", "flask stock adjust",
                  "erp.sync_stock (system:erp)"))
register_action(
    "payment_method.add", entity_type="customer",
    description="A payment method added to a customer",
    entry_points=("PUT /api/admin/customers/<id>/payment-method",))
register_action(
    "payment_method.set_default", entity_type="customer",
    description="A customer's default payment method changed",
    entry_points=("PUT /api/admin/customers/<id>/payment-method",))
register_action(
    "payment_method.remove", entity_type="customer",
    description="A payment method removed from a customer",
    entry_points=("PUT /api/admin/customers/<id>/payment-method",))
register_action(
    "webhook.retry", entity_type="webhook_event",
    description="A failed webhook event put back in the queue by a responder",
    entry_points=("flask webhooks retry", "POST /api/admin/webhooks/failures/retry"))
register_action(
    "user.create", entity_type="user", description="A user created",
    entry_points=("flask users create", "POST /api/admin/users"))
register_action(
    "user.deactivate", entity_type="user",
    description="A user deactivated (their tokens stop working)",
    entry_points=("flask users deactivate", "POST /api/admin/users/<id>/deactivate"))
register_action(
    "token.create", entity_type="api_token", description="An API token issued",
    entry_points=("flask tokens create", "POST /api/admin/tokens"))
register_action(
    "token.revoke", entity_type="api_token", description="An API token revoked",
    entry_points=("flask tokens revoke", "DELETE /api/admin/tokens/<id>"))
register_action(
    "audit.archive", entity_type="audit_partition",
    description="A month of audit rows archived to a verified file and its partition dropped",
    entry_points=("flask audit archive",))
