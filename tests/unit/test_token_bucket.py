"""The dispatcher's token bucket, on a simulated clock: exact, no sleeping for real."""

from __future__ import annotations

import pytest

from reminder.services.sending import RetryPolicy, TokenBucket


class SimulatedTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + 0.0003  # sleeps overshoot a little, as real ones do


def busiest_second(moments: list[float]) -> int:
    return max(sum(1 for t in moments[i:] if t - start < 1.0) for i, start in enumerate(moments))


@pytest.mark.parametrize("rate", [1, 7, 20, 333])
def test_no_second_ever_holds_more_than_the_rate(rate: int):
    time = SimulatedTime()
    bucket = TokenBucket(rate, clock=time.clock, sleep=time.sleep)
    granted = []
    for _ in range(rate * 4):
        bucket.acquire()
        granted.append(time.now)
    assert busiest_second(granted) <= rate
    mean = (len(granted) - 1) / (granted[-1] - granted[0])
    assert rate * 0.93 <= mean <= rate  # the 5% margin, and nothing lost beyond it


def test_a_fractional_rate_spaces_requests_further_apart():
    time = SimulatedTime()
    bucket = TokenBucket(0.5, clock=time.clock, sleep=time.sleep)
    granted = []
    for _ in range(3):
        bucket.acquire()
        granted.append(time.now)
    assert granted[1] - granted[0] >= 2.0 and granted[2] - granted[1] >= 2.0


def test_an_idle_bucket_does_not_save_up_a_burst():
    time = SimulatedTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)
    bucket.acquire()
    time.now += 60  # a quiet minute
    granted = []
    for _ in range(30):
        bucket.acquire()
        granted.append(time.now)
    assert busiest_second(granted) <= 10


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_retry_waits_grow_and_honour_retry_after():
    from tenacity import RetryCallState, Retrying

    from reminder.errors import TransientSendError

    policy = RetryPolicy(first_wait=1.0, max_wait=8.0)
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = 3
    state.set_exception((TransientSendError, TransientSendError("429", "429", 9.0), None))
    assert policy.wait(state) == 9.0
    state.set_exception((TransientSendError, TransientSendError("500", "500"), None))
    assert 2.0 <= policy.wait(state) <= 4.0
