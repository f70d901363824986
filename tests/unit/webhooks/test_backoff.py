import pytest

from service.webhooks.tasks import backoff_delay


def test_delays_double_up_to_the_cap_without_jitter():
    delays = [backoff_delay(n, factor=2, maximum=60, jitter=False) for n in range(7)]
    assert delays == [2, 4, 8, 16, 32, 60, 60]


@pytest.mark.parametrize("retries", range(6))
def test_jittered_delay_stays_in_the_upper_half_of_its_step(retries):
    ceiling = min(600, 2 * 2 ** retries)
    samples = [backoff_delay(retries, factor=2, maximum=600, jitter=True) for _ in range(200)]
    assert all(ceiling / 2 <= s <= ceiling for s in samples)
    assert len(set(samples)) > 20  # it does spread


def test_jittered_delays_never_shrink_from_one_retry_to_the_next():
    for _ in range(500):
        delays = [backoff_delay(n, factor=1, maximum=600, jitter=True) for n in range(5)]
        assert delays == sorted(delays)
