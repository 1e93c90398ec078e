"""``vending board sim``: run the board emulator on a pty until SIGINT/SIGTERM.

The first stdout line is the device path (flushed), so a script can do
``read TTY < <(vending board sim ...)``.  Then one line per request and reply:
``< <line>`` host->board, ``> <line>`` board->host, with a ``[note]`` when noise
dropped or corrupted it.

Technician commands on stdin (one per line), to drive the board by hand:
``key N``, ``cancel``, ``door open|close``, ``jam N``, ``nodrop N``, ``empty N``,
``timeout N``, ``stock N COUNT``, ``disable N``, ``enable N``, ``fault CODE``,
``clear``, ``power``, ``ledger``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from .board import Board, BoardControlError
from .emulator import Emulator


class CommandError(ValueError):
    """A technician command on stdin could not be understood."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slots", type=int, default=10, help="number of slots (default 10)")
    parser.add_argument("--stock", type=int, default=5, help="products per slot (default 5)")
    parser.add_argument("--link", metavar="PATH", default=None,
                        help="where to put the stable symlink to the pty (default: a temp path)")
    parser.add_argument("--vend-seconds", type=float, default=1.0,
                        help="how long a dispense takes (default 1.0)")
    parser.add_argument("--corrupt", type=float, default=0.0, metavar="RATE",
                        help="probability a line is corrupted, each direction (0..1)")
    parser.add_argument("--drop", type=float, default=0.0, metavar="RATE",
                        help="probability a line vanishes, each direction (0..1)")
    parser.add_argument("--seed", type=int, default=None, help="seed for boot numbers and noise")
    for flag, what in (("--jam", "jams"), ("--empty", "reads empty"), ("--disable", "is disabled")):
        parser.add_argument(flag, type=int, action="append", default=[], metavar="SLOT",
                            help=f"this slot {what} (repeatable)")


def build(args: argparse.Namespace, trace=None) -> Emulator:
    """The configured emulator, not yet started.  Raises BoardControlError/ValueError."""
    board = Board(args.slots, stock=args.stock, vend_duration=args.vend_seconds, seed=args.seed)
    for slot in args.jam:
        board.inject(slot, "jam", persistent=True)
    for slot in args.empty:
        board.set_stock(slot, 0)
    for slot in args.disable:
        board.disable_slot(slot)
    return Emulator(board, link_path=args.link, corrupt_rate=args.corrupt,
                    drop_rate=args.drop, seed=args.seed, trace=trace)


def parse_command(text: str, clock: Callable[[], float]) -> Callable[[Board], object] | None:
    """One stdin line -> a function to run on the board (None for a blank line)."""
    words = text.split()
    if not words:
        return None
    verb, rest = words[0].lower(), words[1:]

    def ints(n: int) -> list[int]:
        if len(rest) != n or not all(w.isdigit() for w in rest):
            raise CommandError(f"{verb!r} takes {n} number(s): {text.strip()!r}")
        return [int(w) for w in rest]

    outcomes = {"jam": "jam", "nodrop": "no_drop", "no_drop": "no_drop",
                "empty": "empty", "timeout": "timeout"}
    if verb == "key":
        (slot,) = ints(1)
        return lambda b: b.press_key(slot)
    if verb == "cancel" and not rest:
        return lambda b: b.press_cancel()
    if verb == "door" and rest in (["open"], ["close"], ["closed"]):
        return (lambda b: b.open_door()) if rest[0] == "open" else (lambda b: b.close_door())
    if verb in outcomes:
        (slot,) = ints(1)
        return lambda b: b.inject(slot, outcomes[verb])
    if verb == "stock":
        slot, count = ints(2)
        return lambda b: b.set_stock(slot, count)
    if verb in ("disable", "enable"):
        (slot,) = ints(1)
        return lambda b: b.disable_slot(slot) if verb == "disable" else b.enable_slot(slot)
    if verb == "fault" and len(rest) == 1:
        return lambda b: b.raise_fault(rest[0])
    if verb == "clear" and not rest:
        return lambda b: b.clear_fault()
    if verb == "power" and not rest:
        def cycle(b: Board) -> str:
            b.power_cycle(clock())
            return f"power cycled, boot={b.boot}"
        return cycle
    if verb == "ledger" and not rest:
        return lambda b: "\n".join(str(e) for e in b.ledger) or "(empty ledger)"
    raise CommandError(f"unknown command: {text.strip()!r}")


def _read_commands(emu: Emulator, out: Callable[[str], None]) -> None:
    for text in sys.stdin:
        try:
            fn = parse_command(text, emu.clock)
            if fn is None:
                continue
            result = emu.call(fn)
        except (CommandError, BoardControlError, ValueError) as err:
            out(f"! {err}")
            continue
        if isinstance(result, str):
            out("\n".join(f"! {row}" for row in result.splitlines()))


def run(args: argparse.Namespace) -> int:
    lock = threading.Lock()

    def out(text: str) -> None:
        with lock:
            try:
                print(text, flush=True)
            except (BrokenPipeError, ValueError):
                pass  # whoever read the tty path has stopped listening; keep serving

    def trace(direction: str, line: bytes, note: str) -> None:
        shown = line.rstrip(b"\r\n").decode("ascii", "backslashreplace")
        out(f"{direction} {shown}" + (f"  [{note}]" if note else ""))

    try:
        emu = build(args, trace)
    except ValueError as err:  # BoardControlError is one
        print(f"vending board sim: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        path = emu.start()
        out(path)
        threading.Thread(target=_read_commands, args=(emu, out), daemon=True).start()
        while not stop.wait(0.5):
            pass
    finally:
        emu.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vending board sim", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
