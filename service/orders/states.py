"""The order state machine: which moves go forward, and which never happen."""

PENDING = "pending"
PAID = "paid"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
FAILED = "failed"
DISPUTED = "disputed"

STATUSES = (PENDING, PAID, PARTIALLY_REFUNDED, REFUNDED, FAILED, DISPUTED)

# Events may arrive in any order; only these moves are applied. A refund can arrive
# before the payment it refunds, so pending may go straight to a refunded state, and a
# late success must never pull a refunded or disputed order back to paid.
_ALLOWED = {
    PENDING: {PAID, FAILED, PARTIALLY_REFUNDED, REFUNDED, DISPUTED},
    FAILED: {PAID, PARTIALLY_REFUNDED, REFUNDED, DISPUTED},
    PAID: {PARTIALLY_REFUNDED, REFUNDED, DISPUTED},
    PARTIALLY_REFUNDED: {REFUNDED, DISPUTED},
    DISPUTED: {REFUNDED},
    REFUNDED: set(),
}


def can_move(current: str, target: str) -> bool:
    """True when `current -> target` is a forward move (a move to itself is not)."""
    return target in _ALLOWED.get(current, set())


def refusal(current: str, target: str) -> str | None:
    """Why `current -> target` is refused, or None for a forward move."""
    return None if can_move(current, target) else f"{current} -> {target} is not a forward move"
