"""HostLink and BoardPump over real pseudo-terminals.

Two far ends: the project's board emulator (tests/fixtures/board.py), and ``ScriptedPeer``,
a pty whose answers a test writes by hand, for what a well-behaved board never does
(stale seqs, garbage, silence, a wrong proto).  Timeouts here are hang-guards only.
"""

from __future__ import annotations

import os
import queue
import random
import selectors
import threading
import time
import tty
from collections.abc import Callable

import pytest

from firmware_bridge import replies, vlp
from firmware_bridge.board import Board
from firmware_bridge.link import (
    BoardRebooted,
    BoardRebootedError,
    HostLink,
    LinkState,
    LinkUp,
)
from firmware_bridge.pump import (
    BoardEvent,
    BoardPump,
    CommandDone,
    PumpStopped,
    SlotsCmd,
    StatusCmd,
    Vend,
    VStat,
)
from firmware_bridge.replies import BoardError, LinkDown, ProtocolError
from firmware_bridge.trace import TraceRecorder

GUARD = 20.0  # seconds; only ever reached when something hangs


class ScriptedPeer:
    """The far end of a real pty; ``answer(frame)`` returns the raw lines to send back."""

    def __init__(self, answer: Callable[[vlp.Frame], list[bytes]]) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        reader = vlp.LineReader()
        with selectors.DefaultSelector() as sel:
            sel.register(self.master, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(0.02):
                    continue
                for item in reader.feed(os.read(self.master, 4096)):
                    assert isinstance(item, vlp.Frame), item
                    self.received.append(item.raw)
                    for line in self.answer(item):
                        os.write(self.master, line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(GUARD)
        os.close(self.master)
        os.close(self._slave)

    def count(self, verb: str) -> int:
        return sum(1 for raw in self.received if vlp.decode(raw).verb == verb)


@pytest.fixture
def peer_factory():
    made: list[ScriptedPeer] = []

    def make(answer: Callable[[vlp.Frame], list[bytes]]) -> ScriptedPeer:
        made.append(ScriptedPeer(answer))
        return made[-1]

    yield make
    for p in made:
        p.close()


def ok(seq: int, *args: tuple[str, object], verb: str = "OK") -> bytes:
    return vlp.encode(seq, verb, args)


def hello_args(boot: int = 77, proto: int = 1) -> tuple[tuple[str, object], ...]:
    return (("proto", proto), ("fw", "t1"), ("board", "B1"), ("boot", boot), ("slots", 10))


def board_like(extra: Callable[[vlp.Frame], list[bytes] | None] | None = None, boot: int = 77):
    """HELLO/STATUS/POLL like a quiet board; ``extra`` may take over any request."""

    def answer(f: vlp.Frame) -> list[bytes]:
        if extra is not None:
            got = extra(f)
            if got is not None:
                return got
        if f.verb == "HELLO":
            return [ok(f.seq, *hello_args(boot))]
        if f.verb == "STATUS":
            return [ok(f.seq, ("boot", boot), ("state", "idle"), ("door", "closed"), ("temp", 41))]
        if f.verb == "POLL":
            return [ok(f.seq, ("boot", boot), ("ev", "none"))]
        return [ok(f.seq, ("code", "bad_request"), verb="ERR")]

    return answer


def motor_starts(emu, vend_id: str) -> int:
    """Ledger entries for a vend id: every motor start counts, whatever fell."""
    return sum(1 for e in emu.ledger() if e.vend_id == vend_id)


def link_to(path: str, **kw: object) -> HostLink:
    link = HostLink(path, **kw)  # type: ignore[arg-type]
    link.open()
    return link


# -- the request path, against scripted far ends ------------------------------------------------


def test_stale_replies_are_discarded_and_traced(peer_factory):
    def stale_first(f: vlp.Frame):
        if f.verb == "STATUS":  # an old reply first, then the real one
            return [ok(f.seq - 1 or 65535, ("boot", 1)), *board_like()(f)]
        return None

    peer = peer_factory(board_like(stale_first))
    rec = TraceRecorder()
    with link_to(peer.path, trace=rec) as link:
        assert link.status() == replies.Status(77, "idle", "closed", 41)
    assert len(rec.notes("stale seq")) == 1
    assert peer.count("STATUS") == 1  # the stale line did not cost a retransmit


def test_a_corrupt_reply_is_dropped_and_the_identical_line_resent(peer_factory):
    seen: set[bytes] = set()

    def garble_first(f: vlp.Frame):
        if f.verb == "SLOTS":
            if f.raw not in seen:
                seen.add(f.raw)
                return [b"%d OK n=10 empty=14 disabled=0*0000\n" % f.seq]
            return [ok(f.seq, ("n", 10), ("empty", "14"), ("disabled", "0"))]
        return None

    peer = peer_factory(board_like(garble_first))
    rec = TraceRecorder()
    with link_to(peer.path, trace=rec) as link:
        assert link.slots() == replies.Slots(10, frozenset({3, 5}), frozenset())
    sent = [raw for raw in peer.received if b"SLOTS" in raw]
    assert len(sent) == 2 and sent[0] == sent[1]
    assert rec.notes("crc error") and rec.notes("retransmit 1/5")


def test_silence_means_six_identical_sends_then_link_down(peer_factory):
    peer = peer_factory(board_like(lambda f: [] if f.verb == "VSTAT" else None))
    link = link_to(peer.path, reply_timeout=0.03)
    link.take_notices()
    with pytest.raises(LinkDown, match="after 6 sends"):
        link.vstat("v1")
    sent = [raw for raw in peer.received if b"VSTAT" in raw]
    assert len(sent) == 6 and len(set(sent)) == 1
    assert link.state is LinkState.DOWN
    assert [type(n) for n in link.take_notices()] == [LinkDown]
    # While the backoff runs, calls fail at once and write nothing.
    before = len(peer.received)
    with pytest.raises(LinkDown, match="next attempt"):
        link.status()
    assert len(peer.received) == before
    link.close()


def test_an_unanswered_vend_is_resent_only_after_status_shows_the_same_boot(peer_factory):
    peer = peer_factory(board_like(lambda f: [] if f.verb == "VEND" else None))
    link = link_to(peer.path, reply_timeout=0.03)
    with pytest.raises(LinkDown, match="after 6 attempts"):
        link.vend("v1", 3)
    verbs = [vlp.decode(raw).verb for raw in peer.received if b"VEND" in raw or b"STATUS" in raw]
    assert verbs == ["VEND", "STATUS"] * 6
    link.close()


def test_an_unanswered_vend_is_never_resent_across_a_reboot(peer_factory):
    boot = [77]

    def rebooting(f):
        if f.verb == "VEND":
            boot[0] = 78          # the motor started, the reply is lost, the board reboots
            return []
        if f.verb == "STATUS":
            return [ok(f.seq, ("boot", boot[0]), ("state", "idle"), ("door", "closed"), ("temp", 41))]
        if f.verb == "HELLO":
            return [ok(f.seq, *hello_args(boot[0]))]
        return None

    peer = peer_factory(board_like(rebooting))
    link = link_to(peer.path, reply_timeout=0.03)
    with pytest.raises(LinkDown, match="outcome is unknown"):
        link.vend("v1", 3)
    assert sum(1 for raw in peer.received if b"VEND" in raw) == 1
    link.close()


def test_reset_is_sent_once_and_confirmed_by_a_new_boot(peer_factory):
    boot = [77]

    def on_reset(f: vlp.Frame):
        if f.verb == "RESET":
            boot[0] = 78  # reboots without a word: the OK was "lost"
            return []
        if f.verb == "HELLO":
            return [ok(f.seq, *hello_args(boot[0]))]
        return None

    peer = peer_factory(board_like(on_reset))
    with link_to(peer.path, reply_timeout=0.03) as link:
        link.take_notices()
        assert link.reset().boot == 78
        assert peer.count("RESET") == 1
        assert link.take_notices() == [BoardRebooted(77, 78, link.hello_info)]


def test_a_reset_the_board_never_did_is_reported(peer_factory):
    peer = peer_factory(board_like(lambda f: [] if f.verb == "RESET" else None))
    with link_to(peer.path, reply_timeout=0.03, reset_confirm=0.2) as link:
        with pytest.raises(LinkDown, match="did not confirm the reset"):
            link.reset()
        assert peer.count("RESET") == 1


def test_err_becomes_board_error_with_its_code(peer_factory):
    peer = peer_factory(board_like(
        lambda f: [ok(f.seq, ("code", "not_service"), verb="ERR")] if f.verb == "TEST" else None))
    with link_to(peer.path) as link:
        with pytest.raises(BoardError) as info:
            link.test(2)
        assert info.value.code == "not_service"
        assert link.state is LinkState.UP  # a refusal is not a link problem


@pytest.mark.parametrize("reply_args, match", [
    ((("state", "idle"), ("door", "closed"), ("temp", 41)), "lacks boot="),
    ((("boot", 77), ("state", "dancing"), ("door", "closed"), ("temp", 41)), "state= must be one of"),
    ((("boot", 77), ("state", "idle"), ("door", "ajar"), ("temp", 41)), "door="),
    ((("boot", 77), ("state", "idle"), ("door", "closed"), ("temp", "warm")), "temp="),
])
def test_a_malformed_reply_is_a_protocol_error_naming_the_field(peer_factory, reply_args, match):
    peer = peer_factory(board_like(lambda f: [ok(f.seq, *reply_args)] if f.verb == "STATUS" else None))
    with link_to(peer.path) as link:
        with pytest.raises(ProtocolError, match=match):
            link.status()


def test_a_board_on_another_proto_is_refused(peer_factory):
    peer = peer_factory(lambda f: [ok(f.seq, *hello_args(proto=2))])
    link = HostLink(peer.path)
    with pytest.raises(ProtocolError, match="proto=2"):
        link.open()
    assert link.state is LinkState.DOWN


def test_poll_acknowledges_processed_events(peer_factory):
    events = {1: (("kind", "key"), ("slot", 4)), 2: (("kind", "cancel"),)}

    def poll(f: vlp.Frame):
        if f.verb != "POLL":
            return None
        ack = int(f["ack"]) if f["boot"] == "77" else 0
        nxt = ack + 1
        if nxt in events:
            return [ok(f.seq, ("boot", 77), ("ev", nxt), *events[nxt])]
        return [ok(f.seq, ("boot", 77), ("ev", "none"))]

    peer = peer_factory(board_like(poll))
    with link_to(peer.path) as link:
        got = [link.poll(), link.poll(), link.poll()]
    assert got[0] == replies.Event(1, "key", 77, slot=4)
    assert got[1] == replies.Event(2, "cancel", 77)
    assert got[2] is None
    polls = [vlp.decode(raw) for raw in peer.received if b"POLL" in raw]
    assert [(p["boot"], p["ack"]) for p in polls] == [("77", "0"), ("77", "1"), ("77", "2")]


def test_a_malformed_event_is_reported_then_skipped(peer_factory):
    def poll(f: vlp.Frame):
        if f.verb != "POLL":
            return None
        if f["ack"] == "0":
            return [ok(f.seq, ("boot", 77), ("ev", 1), ("kind", "key"))]  # no slot=
        return [ok(f.seq, ("boot", 77), ("ev", "none"))]

    peer = peer_factory(board_like(poll))
    with link_to(peer.path) as link:
        with pytest.raises(ProtocolError, match="lacks slot="):
            link.poll()
        assert link.poll() is None  # acked past it, or the queue would be stuck forever


def test_each_open_starts_from_a_fresh_random_seq(peer_factory):
    peer = peer_factory(board_like())
    draws = random.Random(5)
    expected = [draws.randint(1, vlp.MAX_SEQ) for _ in range(2)]
    link = HostLink(peer.path, rng=random.Random(5))
    link.open()
    link.open()
    link.close()
    hellos = [vlp.decode(raw).seq for raw in peer.received if b"HELLO" in raw]
    assert hellos == expected


def test_a_port_that_cannot_be_opened_is_link_down(tmp_path):
    link = HostLink(str(tmp_path / "no-such-tty"))
    with pytest.raises(LinkDown, match="cannot open port .*No such file"):
        link.open()
    with pytest.raises(LinkDown, match="next attempt"):
        link.status()


def test_bad_request_arguments_are_value_errors_before_anything_is_sent(peer_factory):
    peer = peer_factory(board_like())
    with link_to(peer.path) as link:
        before = len(peer.received)
        with pytest.raises(vlp.EncodeError, match="value of 'id'"):
            link.vstat("two words")
        assert len(peer.received) == before and link.state is LinkState.UP


# -- against the board emulator -----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_thousand_requests_over_a_noisy_line_vend_each_id_exactly_once(make_emulator):
    emu = make_emulator(board=Board(stock=100, vend_duration=0.0, seed=3),
                        corrupt_rate=0.05, drop_rate=0.05, seed=11)
    link = HostLink(emu.path, rng=random.Random(1))
    rng = random.Random(2)
    vend_ids: list[str] = []
    link_downs = 0
    for i in range(1000):
        roll = rng.random()
        vend_id = f"v{i:04d}"
        for _ in range(50):  # a request that hits link down is reissued (same vend_id)
            try:
                if roll < 0.3:
                    state = link.vend(vend_id, i % 10 + 1)
                    assert state.state in ("running", "done")
                    vend_ids.append(vend_id)
                elif roll < 0.5:
                    link.poll()
                elif roll < 0.7:
                    link.status()
                elif roll < 0.85:
                    assert link.vstat(f"v{max(0, i - 1):04d}").state in ("running", "done", "unknown")
                else:
                    assert link.slots().n == 10
                break
            except LinkDown:
                link_downs += 1
                time.sleep(link.retry_in())
        else:
            pytest.fail(f"request {i} never completed")
    ledger = [e for e in emu.ledger() if e.kind == "vend"]
    assert sorted(e.vend_id for e in ledger) == sorted(vend_ids)  # each exactly once
    assert all(e.result == "ok" for e in ledger)
    stats = emu.stats()
    assert stats.corrupted > 50 and stats.dropped > 50  # the noise really was there
    assert not [n for n in link.take_notices() if isinstance(n, BoardRebooted)]
    link.close()


def test_unplug_and_replug_recovers_without_a_restart(make_emulator):
    emu = make_emulator()
    link = link_to(emu.path)
    boot = link.boot
    emu.unplug()
    with pytest.raises(LinkDown):
        link.status()
    assert link.state is LinkState.DOWN
    emu.replug()
    deadline = time.monotonic() + GUARD
    while True:
        try:
            status = link.status()
            break
        except LinkDown:
            assert time.monotonic() < deadline, "never recovered"
            time.sleep(max(link.retry_in(), 0.01))
    assert status.boot == boot
    kinds = [type(n) for n in link.take_notices()]
    assert kinds[0] is LinkUp and LinkDown in kinds and kinds[-1] is LinkUp
    assert BoardRebooted not in kinds  # same board, same boot
    link.close()


def test_power_cycle_during_a_vend_is_a_boot_change_and_unknown(make_emulator):
    emu = make_emulator(board=Board(vend_duration=30.0))
    link = link_to(emu.path)
    old = link.boot
    assert link.vend("pay-1", 2, boot=old).state == "running"
    link.take_notices()
    new = emu.power_cycle()
    assert link.vstat("pay-1").state == "unknown"
    assert link.take_notices() == [BoardRebooted(old, new, link.hello_info)]
    # The daemon passes the boot it sent the vend on: nothing is sent to the new RAM.
    with pytest.raises(BoardRebootedError):
        link.vstat("pay-1", boot=old)
    with pytest.raises(BoardRebootedError):
        link.vend("pay-1", 2, boot=old)
    assert motor_starts(emu, "pay-1") == 1
    assert [e.result for e in emu.ledger()] == ["interrupted"]
    link.close()


def test_vend_with_boot_refuses_a_board_that_rebooted_unseen(make_emulator):
    emu = make_emulator(board=Board(vend_duration=30.0))
    link = link_to(emu.path)
    old = link.boot
    link.vend("pay-2", 1, boot=old)
    emu.power_cycle()  # no request in between: only the pre-VEND STATUS can see it
    with pytest.raises(BoardRebootedError):
        link.vend("pay-2", 1, boot=old)
    assert motor_starts(emu, "pay-2") == 1
    link.close()


def test_poll_across_a_reboot_starts_again_at_event_one(make_emulator):
    emu = make_emulator()
    link = link_to(emu.path)
    emu.press_key(3)
    assert link.poll().slot == 3
    emu.power_cycle()
    emu.press_key(5)
    assert link.poll() is None  # the reboot is confirmed and reported first
    assert any(isinstance(n, BoardRebooted) for n in link.take_notices())
    event = link.poll()
    assert (event.id, event.slot, event.boot) == (1, 5, link.boot)
    link.close()


def test_the_reply_timeout_follows_the_baud_rate(tmp_path):
    assert HostLink(str(tmp_path / "x"), 9600).reply_timeout == pytest.approx(0.5167, abs=1e-4)
    assert HostLink(str(tmp_path / "x")).reply_timeout == pytest.approx(0.1347, abs=1e-4)


# -- BoardPump ----------------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.q: queue.Queue[object] = queue.Queue()
        self.seen: list[object] = []

    def put(self, item: object) -> None:
        self.q.put(item)

    def until(self, pred: Callable[[object], bool]) -> object:
        deadline = time.monotonic() + GUARD
        while True:
            item = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(item)
            if pred(item):
                return item

    def done(self, n: int) -> list[CommandDone]:
        out: list[CommandDone] = []
        while len(out) < n:
            out.append(self.until(lambda x: isinstance(x, CommandDone)))  # type: ignore[arg-type]
        return out


def test_pump_link_up_first_then_events_and_commands_in_order(make_emulator):
    emu = make_emulator(board=Board(vend_duration=0.0))
    inbox = Inbox()
    with BoardPump(emu.path, inbox.put, poll_interval=0.01, baud=9600, reply_timeout=0.2) as pump:
        assert pump.link.baud == 9600 and pump.link.reply_timeout == 0.2
        up = inbox.until(lambda x: True)
        assert isinstance(up, LinkUp) and up.hello.boot == emu.call(lambda b: b.boot)
        cmds = [Vend("a1", 1, tag="t1"), StatusCmd(), VStat("a1"), SlotsCmd(), Vend("a2", 2)]
        for cmd in cmds:
            pump.submit(cmd)
        done = inbox.done(len(cmds))
        assert [d.cmd for d in done] == cmds
        assert all(d.ok for d in done), done
        assert done[0].reply.state in ("running", "done") and done[0].cmd.tag == "t1"
        emu.press_key(7)
        ev = inbox.until(lambda x: isinstance(x, BoardEvent) and x.event.kind == "key")
        assert ev.event.slot == 7
    assert motor_starts(emu, "a1") == 1 and motor_starts(emu, "a2") == 1


def test_pump_fails_fast_while_down_and_says_link_up_again_first(make_emulator):
    emu = make_emulator()
    inbox = Inbox()
    with BoardPump(emu.path, inbox.put, poll_interval=0.01) as pump:
        inbox.until(lambda x: isinstance(x, LinkUp))
        emu.unplug()
        inbox.until(lambda x: isinstance(x, LinkDown))
        pump.submit(Vend("x1", 1))
        (done,) = inbox.done(1)
        assert isinstance(done.error, LinkDown)
        assert motor_starts(emu, "x1") == 0
        emu.replug()
        up = inbox.until(lambda x: isinstance(x, LinkUp))
        pump.submit(StatusCmd())
        (done,) = inbox.done(1)
        assert done.ok and done.reply.boot == up.hello.boot
        assert inbox.seen.index(up) < inbox.seen.index(done)


def test_pump_on_a_dead_port_says_link_down_and_fails_commands_fast(tmp_path):
    inbox = Inbox()
    with BoardPump(str(tmp_path / "ttyGONE"), inbox.put) as pump:
        first = inbox.until(lambda x: True)
        assert isinstance(first, LinkDown) and "cannot open port" in first.reason
        pump.submit(Vend("d1", 1))
        (done,) = inbox.done(1)
        assert isinstance(done.error, LinkDown)


def test_pump_reports_a_reboot_and_refuses_a_vend_for_the_old_boot(make_emulator):
    emu = make_emulator(board=Board(vend_duration=30.0))
    inbox = Inbox()
    with BoardPump(emu.path, inbox.put, poll_interval=0.01) as pump:
        boot = inbox.until(lambda x: isinstance(x, LinkUp)).hello.boot
        pump.submit(Vend("p1", 4, boot=boot))
        assert inbox.done(1)[0].reply.state == "running"
        new = emu.power_cycle()
        rebooted = inbox.until(lambda x: isinstance(x, BoardRebooted))
        assert (rebooted.old_boot, rebooted.new_boot) == (boot, new)
        pump.submit(VStat("p1"))
        pump.submit(Vend("p1", 4, boot=boot))
        vstat, vend = inbox.done(2)
        assert vstat.reply.state == "unknown"
        assert isinstance(vend.error, BoardRebootedError)
    assert motor_starts(emu, "p1") == 1


def test_pump_stop_answers_every_command_and_then_refuses(make_emulator):
    emu = make_emulator(board=Board(vend_duration=0.0))
    inbox = Inbox()
    pump = BoardPump(emu.path, inbox.put, poll_interval=0.01)
    inbox.until(lambda x: isinstance(x, LinkUp))
    for i in range(20):
        pump.submit(Vend(f"s{i}", i % 10 + 1))
    pump.stop()
    assert not pump._thread.is_alive()
    done = [x for x in iter_queue(inbox.q) if isinstance(x, CommandDone)]
    assert len(done) == 20  # each one answered: a reply, or LinkDown("pump stopped")
    for d in done:
        assert d.ok or "pump stopped" in str(d.error)
        assert motor_starts(emu, d.cmd.vend_id) == (1 if d.ok else 0)
    with pytest.raises(PumpStopped):
        pump.submit(StatusCmd())


def test_a_pump_stopped_before_it_started_still_answers(tmp_path):
    inbox = Inbox()
    pump = BoardPump(str(tmp_path / "unused"), inbox.put, autostart=False)
    pump.submit(SlotsCmd())
    pump.stop()
    (done,) = [x for x in iter_queue(inbox.q) if isinstance(x, CommandDone)]
    assert "pump stopped" in str(done.error)


def test_pump_survives_a_consumer_that_raises(make_emulator):
    emu = make_emulator()
    inbox = Inbox()
    calls = []

    def flaky(item: object) -> None:
        calls.append(item)
        if len(calls) == 1:
            raise RuntimeError("consumer bug")
        inbox.put(item)

    with BoardPump(emu.path, flaky, poll_interval=0.01) as pump:
        pump.submit(StatusCmd())
        assert inbox.done(1)[0].ok


def iter_queue(q: queue.Queue[object]) -> list[object]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


# -- typed replies (pure) -----------------------------------------------------------------------


def frame(*args: tuple[str, object], verb: str = "OK") -> vlp.Frame:
    return vlp.decode(vlp.encode(9, verb, args))


def test_slots_bitmap_matches_the_contract_vector():
    s = replies.parse_slots(frame(("n", 10), ("empty", "14"), ("disabled", "0")))
    assert s == replies.Slots(10, frozenset({3, 5}), frozenset())
    assert replies.to_bitmap({3, 5}) == "14"


@pytest.mark.parametrize("empty, match", [
    ("1e", "upper-case hex"), ("800", "above n=10"), ("-1", "upper-case hex"), ("G", "upper-case hex"),
])
def test_bad_bitmaps(empty, match):
    with pytest.raises(ProtocolError, match=match):
        replies.parse_slots(frame(("n", 10), ("empty", empty), ("disabled", "0")))


@pytest.mark.parametrize("args, expected", [
    ((("state", "running"),), replies.VendState("running")),
    ((("state", "done"), ("result", "ok")), replies.VendState("done", "ok")),
    ((("state", "done"), ("result", "jam")), replies.VendState("done", "jam")),
])
def test_vend_states(args, expected):
    assert replies.parse_vend(frame(*args)) == expected


@pytest.mark.parametrize("args, match", [
    ((("state", "done"),), "lacks result="),
    ((("state", "running"), ("result", "ok")), "must not carry"),
    ((("state", "unknown"),), "state= must be one of"),  # VEND never answers unknown
    ((("state", "paused"),), "state= must be one of"),
])
def test_bad_vend_replies(args, match):
    with pytest.raises(ProtocolError, match=match):
        replies.parse_vend(frame(*args))


def test_vstat_may_say_unknown_and_only_ok_means_dispensed():
    assert replies.parse_vstat(frame(("state", "unknown"))) == replies.VendState("unknown")
    assert replies.VendState("done", "ok").dispensed
    assert not replies.VendState("done", "no_drop").dispensed


@pytest.mark.parametrize("args, expected", [
    ((("kind", "door"), ("state", "open")), {"state": "open"}),
    ((("kind", "fault"), ("code", "motor")), {"code": "motor"}),
    ((("kind", "vend"), ("id", "v9"), ("result", "ok")), {"vend_id": "v9", "result": "ok"}),
    ((("kind", "key"), ("slot", 2), ("future", "x")), {"slot": 2}),  # unknown keys ignored
])
def test_event_kinds(args, expected):
    boot, ev = replies.parse_poll(frame(("boot", 5), ("ev", 3), *args))
    assert boot == 5 and ev.id == 3
    assert {k: getattr(ev, k) for k in expected} == expected


@pytest.mark.parametrize("args, match", [
    ((("boot", 5), ("ev", "0")), "ev= must be"),
    ((("boot", 5), ("ev", 1), ("kind", "party")), "kind= must be one of"),
    ((("ev", "none"),), "lacks boot="),
])
def test_bad_polls(args, match):
    with pytest.raises(ProtocolError, match=match):
        replies.parse_poll(frame(*args))


def test_err_without_code_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="lacks code="):
        replies.check_ok(frame(verb="ERR"))
