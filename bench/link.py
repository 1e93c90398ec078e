"""How much does HostLink add to a VLP/1 round trip?

Runs the board emulator on a real pty and measures, in the same run and on the same pty:

* raw: a bare pyserial write of one request line and a chunked read up to its "\n" (no
  codec, no retransmit queue, no parsing) -- the floor the pty and the emulator set;
* link: the same request through ``HostLink`` (HELLO, VEND, VSTAT), reply parsed and typed.

and prints p50/p99 of each and their ratio, then the wire-time model: the bytes of one
exchange at 9600 and 115200 baud (8N1: 10 bits a byte), which is what a real UART adds and
a pty does not.  No thresholds: it reports, it does not judge.

    .venv/bin/python bench/link.py [--n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import serial  # noqa: E402

from _stats import ms, p50_p99, ratio, times  # noqa: E402

from firmware_bridge import vlp  # noqa: E402
from firmware_bridge.board import Board  # noqa: E402
from firmware_bridge.emulator import Emulator  # noqa: E402
from firmware_bridge.link import HostLink  # noqa: E402
from firmware_bridge.requester import default_reply_timeout  # noqa: E402
from firmware_bridge.trace import TraceRecorder  # noqa: E402


def raw_round_trips(path: str, lines: Callable[[int], bytes], n: int) -> list[float]:
    out = []
    with serial.Serial(path, 115200, timeout=2.0) as port:
        for i in range(n):
            line = lines(i)
            t0 = time.perf_counter()
            port.write(line)
            reply = b""
            while not reply.endswith(b"\n"):  # the same chunked read HostLink does
                chunk = port.read(max(1, port.in_waiting))
                if not chunk:
                    break
                reply += chunk
            out.append(time.perf_counter() - t0)
            if not reply.endswith(b"\n"):
                raise SystemExit(f"raw round trip {i} got no reply: {reply!r}")
    return out


def link_round_trips(path: str, op: Callable[[HostLink, int], object], n: int,
                     trace: TraceRecorder | None) -> list[float]:
    out = []
    with HostLink(path, trace=trace) as link:
        link.open()
        for i in range(n):
            t0 = time.perf_counter()
            op(link, i)
            out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="exchanges per kind (default 2000)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternate raw and link this many times, so drift hits both")
    args = parser.parse_args(argv)
    per = max(32, args.n // args.rounds)

    def recent(base: int, i: int) -> int:
        return base + per - 1 - i % 32

    emu = Emulator(Board(stock=10**7, vend_duration=0.0, seed=1), seed=1)
    path = emu.start()
    rec = TraceRecorder()
    raw: dict[str, list[float]] = {"HELLO": [], "VEND": [], "VSTAT": []}
    via: dict[str, list[float]] = {"HELLO": [], "VEND": [], "VSTAT": []}
    seq = iter(range(1, 10**9))

    def next_seq() -> int:
        return next(seq) % vlp.MAX_SEQ + 1

    try:
        for r in range(args.rounds):
            base = r * per
            raw["HELLO"] += raw_round_trips(path, lambda i: vlp.encode(next_seq(), "HELLO"), per)
            raw["VEND"] += raw_round_trips(
                path, lambda i: vlp.encode(next_seq(), "VEND", {"id": f"r{base + i}", "slot": i % 10 + 1}), per)
            # The board remembers its last 32 vends: ask about those, so each VSTAT is one
            # exchange ("unknown" would make HostLink check the boot with a STATUS too).
            raw["VSTAT"] += raw_round_trips(
                path, lambda i: vlp.encode(next_seq(), "VSTAT", {"id": f"r{recent(base, i)}"}), per)
            via["HELLO"] += link_round_trips(path, lambda link, i: link.hello(), per, None)
            via["VEND"] += link_round_trips(
                path, lambda link, i: link.vend(f"h{base + i}", i % 10 + 1), per, None)
            via["VSTAT"] += link_round_trips(
                path, lambda link, i: link.vstat(f"h{recent(base, i)}"), per, None)
        # A short traced pass, apart from the timed ones, for the byte counts of the model.
        link_round_trips(path, lambda link, i: (link.hello(), link.vend(f"t{i}", 1), link.vstat(f"t{i}")),
                         20, rec)
    finally:
        emu.stop()

    print(f"VLP/1 round trip over a pty, {per * args.rounds} exchanges per kind "
          f"({args.rounds} alternating rounds of raw then HostLink)")
    print(f"{'request':8} {'raw p50':>9} {'raw p99':>9} {'link p50':>9} {'link p99':>9} "
          f"{'ratio p50':>9} {'ratio p99':>9}")
    for verb in raw:
        r50, r99 = p50_p99(raw[verb])
        l50, l99 = p50_p99(via[verb])
        print(f"{verb:8} {ms(r50)} {ms(r99)} {ms(l50)} {ms(l99)} "
              f"{times(ratio(l50, r50))} {times(ratio(l99, r99))}")

    print("\nwire-time model (8N1, 10 bits a byte), from the lines actually exchanged:")
    print(f"{'request':8} {'tx bytes':>9} {'rx bytes':>9} {'9600 baud':>10} {'115200':>9}")
    for verb in raw:
        tx = [len(x.raw) for x in rec.records if x.direction == "tx" and f" {verb}" in x.raw.decode()]
        seqs = {x.raw.split(b" ", 1)[0] for x in rec.records if x.direction == "tx" and f" {verb}" in x.raw.decode()}
        rx = [len(x.raw) for x in rec.records if x.direction == "rx" and x.raw.split(b" ", 1)[0] in seqs]
        exchange = statistics.mean(tx) + statistics.mean(rx)
        print(f"{verb:8} {statistics.mean(tx):9.1f} {statistics.mean(rx):9.1f} "
              f"{exchange * 10 / 9600 * 1e3:8.2f}ms {exchange * 10 / 115200 * 1e3:7.2f}ms")
    print(f"reply_timeout: {default_reply_timeout(9600) * 1e3:.0f} ms at 9600, "
          f"{default_reply_timeout(115200) * 1e3:.0f} ms at 115200 (100 ms + 400 bytes of wire time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
