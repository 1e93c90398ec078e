"""The retransmit queue is pure: every rule is checked here without a port or a clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import vlp
from firmware_bridge.requester import (
    GaveUp,
    Matched,
    Phase,
    Requester,
    RequesterStateError,
    Stale,
    Write,
    default_reply_timeout,
)

T = 0.135


def reply(seq: int, *args: tuple[str, str], verb: str = "OK") -> vlp.Frame:
    return vlp.decode(vlp.encode(seq, verb, args))


def opened(first_seq: int = 100, **kw: object) -> Requester:
    r = Requester(T, **kw)  # type: ignore[arg-type]
    r.open(first_seq)
    return r


# -- configuration ------------------------------------------------------------------------------


def test_reply_timeout_is_100ms_plus_400_bytes_of_wire_time():
    assert default_reply_timeout(115200) == pytest.approx(0.1347, abs=1e-4)
    assert default_reply_timeout(9600) == pytest.approx(0.5167, abs=1e-4)


@pytest.mark.parametrize("baud", [0, -9600, 96.5, "9600", True, None])
def test_bad_baud_is_refused_by_name(baud):
    with pytest.raises(ValueError, match="baud"):
        default_reply_timeout(baud)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_bad_reply_timeout(timeout):
    with pytest.raises(ValueError, match="reply_timeout"):
        Requester(timeout)


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_bad_retransmit_count(n):
    with pytest.raises(ValueError, match="max_retransmits"):
        Requester(T, max_retransmits=n)


@pytest.mark.parametrize("seq", [0, 65536, -1, True, "5", 1.0])
def test_open_refuses_a_seq_outside_1_to_65535(seq):
    with pytest.raises(ValueError, match="first_seq"):
        Requester(T).open(seq)


# -- sending ------------------------------------------------------------------------------------


def test_nothing_can_be_sent_before_open():
    with pytest.raises(RequesterStateError, match="closed"):
        Requester(T).send("HELLO", now=0.0)


def test_send_writes_the_encoded_line_and_arms_the_deadline():
    r = opened(42)
    w = r.send("VEND", {"id": "v1a2b3c4d", "slot": 3}, now=10.0)
    # VEND is resent by HostLink only after a boot check, never by the queue itself.
    assert w == Write(b"42 VEND id=v1a2b3c4d slot=3*C9B6\n", 42, "VEND", 0, 0)
    assert w.note == ""
    assert r.phase is Phase.AWAITING
    assert r.deadline == pytest.approx(10.0 + T)
    assert r.awaiting == (42, "VEND")


def test_one_request_in_flight_at_a_time():
    r = opened()
    r.send("HELLO", now=0.0)
    with pytest.raises(RequesterStateError, match="awaiting"):
        r.send("STATUS", now=0.0)


def test_every_request_gets_a_new_seq_wrapping_65535_to_1():
    r = opened(65534)
    seqs = []
    for i in range(4):
        w = r.send("STATUS", now=float(i))
        seqs.append(w.seq)
        assert isinstance(r.receive(reply(w.seq), now=float(i)), Matched)
    assert seqs == [65534, 65535, 1, 2]


def test_a_line_the_grammar_refuses_uses_up_no_seq():
    r = opened(7)
    with pytest.raises(vlp.EncodeError, match="value of 'id'"):
        r.send("VSTAT", {"id": "has space"}, now=0.0)
    assert r.phase is Phase.IDLE
    assert r.send("VSTAT", {"id": "ok"}, now=0.0).seq == 7


def test_reopen_restarts_from_the_new_seq_and_forgets_the_request_in_flight():
    r = opened(10)
    r.send("HELLO", now=0.0)
    r.open(500)
    assert r.phase is Phase.IDLE and r.deadline is None
    assert isinstance(r.receive(reply(10), now=0.0), Stale)
    assert r.send("HELLO", now=0.0).seq == 500


def test_close_then_nothing_is_awaited():
    r = opened()
    r.send("HELLO", now=0.0)
    r.close()
    assert r.phase is Phase.CLOSED and r.deadline is None and r.awaiting is None
    assert r.poll(100.0) is None
    r.close()  # idempotent


# -- replies ------------------------------------------------------------------------------------


def test_the_awaited_reply_matches_and_ends_the_request():
    r = opened(5)
    r.send("STATUS", now=0.0)
    m = r.receive(reply(5, ("boot", "1")), now=0.01)
    assert isinstance(m, Matched) and m.verb == "STATUS" and m.attempts == 1
    assert r.phase is Phase.IDLE and r.deadline is None


def test_a_reply_with_another_seq_is_stale_and_keeps_waiting():
    r = opened(5)
    r.send("STATUS", now=0.0)
    s = r.receive(reply(4), now=0.01)
    assert isinstance(s, Stale) and "stale seq 4 (awaiting 5)" in s.note
    assert r.phase is Phase.AWAITING
    assert isinstance(r.receive(reply(5), now=0.02), Matched)


def test_a_reply_when_nothing_is_awaited_is_stale():
    r = opened(5)
    s = r.receive(reply(5), now=0.0)
    assert isinstance(s, Stale) and "nothing awaited" in s.note


def test_a_request_line_is_never_taken_for_a_reply():
    # A half-duplex RS-485 transceiver can echo our own line back to us.
    r = opened(5)
    w = r.send("HELLO", now=0.0)
    s = r.receive(vlp.decode(w.line), now=0.0)
    assert isinstance(s, Stale) and "not a reply" in s.note
    assert r.phase is Phase.AWAITING


def test_err_is_a_reply_too():
    r = opened(5)
    r.send("TEST", {"slot": 1}, now=0.0)
    assert isinstance(r.receive(reply(5, ("code", "not_service"), verb="ERR"), now=0.0), Matched)


def test_a_late_reply_after_giving_up_is_stale():
    r = opened(5, max_retransmits=0)
    r.send("STATUS", now=0.0)
    assert isinstance(r.poll(T), GaveUp)
    assert isinstance(r.receive(reply(5), now=T), Stale)


# -- retransmission -----------------------------------------------------------------------------


def test_nothing_to_do_before_the_deadline():
    r = opened()
    r.send("HELLO", now=0.0)
    assert r.poll(T * 0.99) is None
    assert r.phase is Phase.AWAITING


def test_vend_is_never_resent_by_the_queue():
    r = opened(9)
    r.send("VEND", {"id": "abc", "slot": 2}, now=0.0)
    action = r.poll(r.deadline)
    assert isinstance(action, GaveUp) and action.attempts == 1


def test_timeout_resends_the_identical_line_five_times_then_gives_up():
    r = opened(9)
    first = r.send("VSTAT", {"id": "abc"}, now=0.0)
    now, writes = 0.0, []
    while True:
        now = r.deadline
        action = r.poll(now)
        if isinstance(action, GaveUp):
            break
        writes.append(action)
        assert r.deadline == pytest.approx(now + T)
    assert [w.line for w in writes] == [first.line] * 5
    assert [w.attempt for w in writes] == [1, 2, 3, 4, 5]
    assert [w.note for w in writes] == [f"retransmit {i}/5" for i in range(1, 6)]
    assert action.attempts == 6 and action.seq == 9 and action.line == first.line
    assert "after 6 sends" in action.reason
    assert r.phase is Phase.IDLE and r.deadline is None
    assert r.send("HELLO", now=now).seq == 10  # the next request gets a new seq


def test_a_reply_to_a_retransmit_matches_with_its_attempt_count():
    r = opened(9)
    r.send("HELLO", now=0.0)
    r.poll(T)
    r.poll(2 * T)
    m = r.receive(reply(9), now=2 * T + 0.01)
    assert isinstance(m, Matched) and m.attempts == 3


def test_reset_is_never_resent():
    r = opened(3)
    r.send("RESET", now=0.0)
    action = r.poll(T)
    assert isinstance(action, GaveUp) and action.attempts == 1
    assert "never resent" in action.reason
    assert r.phase is Phase.IDLE


def test_a_late_poll_rearms_from_now_not_from_the_old_deadline():
    r = opened()
    r.send("HELLO", now=0.0)
    r.poll(5.0)  # the caller was descheduled for a while
    assert r.deadline == pytest.approx(5.0 + T)


def test_max_retransmits_is_configurable():
    r = opened(max_retransmits=2)
    r.send("HELLO", now=0.0)
    kinds = [type(r.poll(t)).__name__ for t in (T, 2 * T, 3 * T)]
    assert kinds == ["Write", "Write", "GaveUp"]


# -- a model check over random interleavings ----------------------------------------------------

_actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(["HELLO", "STATUS", "VEND", "RESET", "POLL"])),
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=3 * T)),
        st.tuples(st.just("reply"), st.integers(min_value=-2, max_value=2)),  # seq offset; 0 = awaited
        st.tuples(st.just("reopen"), st.integers(min_value=1, max_value=65535)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(first=st.integers(min_value=1, max_value=65535), actions=_actions)
def test_model(first, actions):
    """Whatever happens: each request is written identically at most 1+5 times (RESET
    once), seqs follow each other with wrap-around, and only the awaited seq matches."""
    r = Requester(T)
    r.open(first)
    now = 0.0
    expected_seq = first
    sent: dict[int, list[bytes]] = {}  # request number -> lines written
    current: tuple[int, int, str] | None = None  # (request number, seq, verb)
    n = 0

    def on_write(w: Write) -> None:
        assert current is not None and w.seq == current[1]
        sent[current[0]].append(w.line)

    for kind, arg in actions:
        if kind == "send":
            if r.phase is Phase.AWAITING:
                with pytest.raises(RequesterStateError):
                    r.send(arg, now=now)
                continue
            w = r.send(arg, now=now)
            assert w.seq == expected_seq
            expected_seq = 1 if expected_seq == 65535 else expected_seq + 1
            n += 1
            current = (n, w.seq, arg)
            sent[n] = []
            on_write(w)
        elif kind == "wait":
            now += arg
            while (d := r.deadline) is not None and d <= now:
                action = r.poll(d)  # as a prompt caller would, at each deadline
                if isinstance(action, Write):
                    on_write(action)
                else:
                    assert isinstance(action, GaveUp) and current is not None
                    assert action.attempts == len(sent[current[0]])
                    current = None
        elif kind == "reply":
            seq = ((current[1] if current else expected_seq) + arg - 1) % 65535 + 1
            out = r.receive(reply(seq), now=now)
            if current is not None and arg == 0:
                assert isinstance(out, Matched) and out.attempts == len(sent[current[0]])
                current = None
            else:
                assert isinstance(out, Stale)
        else:
            r.open(arg)
            expected_seq, current = arg, None
    for lines in sent.values():
        assert len(set(lines)) == 1  # identical line every time
        cap = 1 if lines and b" RESET" in lines[0] else 6
        assert 1 <= len(lines) <= cap
