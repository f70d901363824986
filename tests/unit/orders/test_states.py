import pytest

from service.orders import states


@pytest.mark.parametrize("current,target", [
    ("pending", "paid"), ("pending", "failed"), ("failed", "paid"), ("paid", "refunded"),
    ("paid", "partially_refunded"), ("partially_refunded", "refunded"), ("paid", "disputed"),
    ("pending", "refunded"), ("disputed", "refunded"),
])
def test_forward_moves_are_allowed(current, target):
    assert states.can_move(current, target)


@pytest.mark.parametrize("current,target", [
    ("refunded", "paid"), ("partially_refunded", "paid"), ("paid", "pending"),
    ("paid", "failed"), ("refunded", "partially_refunded"), ("disputed", "paid"),
    ("refunded", "failed"), ("paid", "paid"),
])
def test_backward_or_sideways_moves_are_refused(current, target):
    assert not states.can_move(current, target)
