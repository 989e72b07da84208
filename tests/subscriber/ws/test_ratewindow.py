"""A connection's subscribe rate: limits' moving-window rule, per session."""

from __future__ import annotations

from limits import parse

from pricepipe.subscriber.ws.ratewindow import MovingWindow


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_at_most_amount_hits_in_any_window() -> None:
    clock = Clock()
    window = MovingWindow(parse("3/second"), clock=clock)
    hits = []
    for at in (100.0, 100.2, 100.4, 100.4):
        clock.now_s = at
        hits.append(window.hit())
    assert hits == [True, True, True, False]
    clock.now_s = 100.999
    assert not window.hit()  # the first hit is still inside the second
    clock.now_s = 101.0
    assert window.hit()  # it has left: one more
    assert not window.hit()  # the one at 100.2 has not


def test_refused_hits_are_not_counted() -> None:
    clock = Clock()
    window = MovingWindow(parse("2/minute"), clock=clock)
    assert window.hit() and window.hit()
    for _ in range(50):  # a client hammering while refused
        clock.now_s += 1
        assert not window.hit()
    clock.now_s = 100.0 + 60  # a minute after the first two: both left
    assert window.hit() and window.hit() and not window.hit()


def test_the_window_moves_hit_by_hit() -> None:
    clock = Clock()
    window = MovingWindow(parse("2/10 seconds"), clock=clock)
    assert window.hit()           # t=100
    clock.now_s = 105
    assert window.hit()           # t=105
    clock.now_s = 110
    assert window.hit()           # the t=100 hit left; t=105 still in
    assert not window.hit()
    clock.now_s = 115
    assert window.hit()           # the t=105 hit left


def test_sessions_do_not_share_a_window() -> None:
    clock = Clock()
    rate = parse("1/second")
    a, b = MovingWindow(rate, clock=clock), MovingWindow(rate, clock=clock)
    assert a.hit() and not a.hit()
    assert b.hit()
