"""``vending board``: technician tools for the dispensing board over VLP/1.

    vending board --port /dev/ttyUSB0 status
    vending board --port /dev/ttyUSB0 monitor        # every line both ways, live
    vending board sim                                # an emulated board on a pty

Exit codes: 0 ok, 2 usage, 3 link down / timeout / port cannot be opened (or a reply that
breaks the contract), 4 the board answered ERR.  Errors are one sentence on stderr.
``--json`` prints one JSON object per result or event instead of text.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

from firmware_bridge import vlp
from firmware_bridge.link import BoardRebooted, HostLink, LinkUp
from firmware_bridge.replies import BoardError, LinkDown, LinkError
from firmware_bridge.trace import TraceRecord, format_record, record_json

EXIT_OK, EXIT_USAGE, EXIT_LINK, EXIT_BOARD = 0, 2, 3, 4

HINTS = {
    "not_service": "TEST is accepted only in service state: open the door first",
    "door_open": "the door is open: close it to vend",
    "busy": "another dispense is running",
    "bad_slot": "that slot does not exist or is disabled",
    "bad_request": "the board did not understand the request",
    "fault": "the board reports a fault: check STATUS",
}

COMMANDS = ("hello", "status", "slots", "poll", "vstat", "test", "reset", "raw", "monitor", "sim")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The link options work before or after the command word: the copies on each command
    # default to SUPPRESS so they never overwrite a value given before it.
    _link_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _link_options(common, suppress=True)
    sub = parser.add_subparsers(dest="board_command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    add("hello", "handshake: protocol, firmware, board id, boot number, slot count")
    add("status", "board state, door, temperature and boot number")
    add("slots", "which slots read empty or are disabled")
    p = add("poll", "follow board events live, acknowledging them, until Ctrl-C")
    p.add_argument("--interval", type=float, default=0.2, metavar="SECONDS", help="poll period (default 0.2)")
    p = add("vstat", "the state of a dispense by its vend id")
    p.add_argument("vend_id", metavar="ID", help="the vend id given to VEND")
    p = add("test", "run a slot motor (the board accepts it only with the door open)")
    p.add_argument("--slot", type=int, required=True, metavar="N", help="slot number, 1..n")
    add("reset", "reboot the board and confirm it with a HELLO showing a new boot")
    p = add("raw", "send one request, e.g. 'VSTAT id=abc'; seq and CRC are filled in")
    p.add_argument("request", metavar="'VERB k=v ...'", help="the request, without seq and CRC")
    p = add("monitor", "live trace of every line both ways, with events and STATUS changes")
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                   help="poll period (default 0.5)")
    p.add_argument("--status-every", type=float, default=2.0, metavar="SECONDS",
                   help="how often to ask STATUS (default 2)")
    p = sub.add_parser("sim", help="run the board emulator on a pseudo-terminal",
                       description="run the board emulator on a pseudo-terminal")
    from firmware_bridge import sim_cli

    sim_cli.add_arguments(p)


def _link_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--port", metavar="PORT", default=default(None),
                        help="serial device or pyserial URL (e.g. /dev/ttyUSB0, socket://host:port)")
    parser.add_argument("--baud", type=int, metavar="N", default=default(115200),
                        help="baud rate (default 115200; 9600 also works)")
    parser.add_argument("--reply-timeout", type=float, metavar="SECONDS", default=default(None),
                        help="override the reply timeout (default 0.1 s + 400 bytes of wire time)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output: one JSON object per line")


def run(args: argparse.Namespace) -> int:
    if args.board_command == "sim":
        from firmware_bridge import sim_cli

        return sim_cli.run(args)
    if not args.port:
        return _fail(EXIT_USAGE, f"--port is required for 'board {args.board_command}'")
    if args.baud <= 0:
        return _fail(EXIT_USAGE, f"--baud must be a positive number, not {args.baud}")
    if args.reply_timeout is not None and args.reply_timeout <= 0:
        return _fail(EXIT_USAGE, f"--reply-timeout must be positive, not {args.reply_timeout}")
    raw_request = None
    if args.board_command == "raw":
        try:
            raw_request = parse_raw(args.request)
        except ValueError as err:
            return _fail(EXIT_USAGE, str(err))
    out = _Output(args.json)
    live = args.board_command in ("poll", "monitor")
    link = HostLink(args.port, args.baud, reply_timeout=args.reply_timeout,
                    trace=out.trace if args.board_command == "monitor" else None)
    try:
        link.open()
        out.notices(link, quiet=not live)
        if args.board_command == "raw":
            assert raw_request is not None
            return _raw(link, out, *raw_request)
        if args.board_command in ("poll", "monitor"):
            return _follow(link, out, args)
        return _ONE_SHOT[args.board_command](link, out, args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BoardError as err:
        hint = HINTS.get(err.code)
        return _fail(EXIT_BOARD, f"the board refused with code={err.code}" + (f" ({hint})." if hint else "."))
    except LinkError as err:
        return _fail(EXIT_LINK, f"{err}.")
    except vlp.EncodeError as err:
        return _fail(EXIT_USAGE, f"{err}.")
    finally:
        link.close()


def parse_raw(text: str) -> tuple[str, dict[str, str]]:
    """``'VSTAT id=abc'`` -> ("VSTAT", {"id": "abc"}); ValueError naming what is wrong."""
    tokens = text.split()
    if not tokens:
        raise ValueError("raw needs a request such as 'STATUS' or 'VSTAT id=abc'")
    verb, args = tokens[0], {}
    for token in tokens[1:]:
        key, eq, value = token.partition("=")
        if not eq:
            raise ValueError(f"raw argument {token!r} is not key=value")
        if key in args:
            raise ValueError(f"raw argument {key!r} is given twice")
        args[key] = value
    vlp.encode(1, verb, args)  # grammar check now: a usage error, not a link error
    return verb, args


# -- commands ---------------------------------------------------------------------------------


def _raw(link: HostLink, out: _Output, verb: str, args: dict[str, str]) -> int:
    try:
        frame = link.request(verb, **args)
    except BoardError as err:
        if err.frame is not None:
            out.frame(err.frame)
        raise
    out.frame(frame)
    return EXIT_OK


def _hello(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    assert link.hello_info is not None  # open() just said HELLO
    out.value(link.hello_info)
    return EXIT_OK


def _status(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    out.value(link.status())
    return EXIT_OK


def _slots(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    out.value(link.slots())
    return EXIT_OK


def _vstat(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    out.value(link.vstat(args.vend_id))
    return EXIT_OK


def _test(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    out.value(link.test(args.slot))
    return EXIT_OK


def _reset(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    hello = link.reset()
    out.notices(link)
    out.value(hello)
    return EXIT_OK


_ONE_SHOT: dict[str, Callable[[HostLink, _Output, argparse.Namespace], int]] = {
    "hello": _hello, "status": _status, "slots": _slots, "vstat": _vstat, "test": _test,
    "reset": _reset,
}


def _follow(link: HostLink, out: _Output, args: argparse.Namespace) -> int:
    """poll and monitor: run until Ctrl-C, surviving link drops (they are reported)."""
    monitor = args.board_command == "monitor"
    last_status = None
    next_status = 0.0
    while True:
        try:
            if monitor and time.monotonic() >= next_status:
                status = link.status()
                next_status = time.monotonic() + args.status_every
                if status != last_status:
                    out.value(status, prefix="status ")
                    last_status = status
            event = link.poll()
        except LinkDown:
            out.notices(link)
            time.sleep(max(link.retry_in(), args.interval))
            continue
        except LinkError as err:  # a malformed reply: say so, keep following
            out.notices(link)
            out.error(f"{err}")
            time.sleep(args.interval)
            continue
        out.notices(link)
        if event is not None:
            out.value(event, prefix="event ")
        else:
            time.sleep(args.interval)


# -- output -----------------------------------------------------------------------------------


def _plain(value: object) -> object:
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def _fields(value: object) -> dict[str, object]:
    return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}  # type: ignore[call-overload]


def _text(fields: dict[str, object]) -> str:
    def show(v: object) -> str:
        if isinstance(v, list):
            return ",".join(map(str, v)) or "none"
        return str(v)

    return " ".join(f"{k}={show(v)}" for k, v in fields.items() if v is not None)


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def _print(self, text: str) -> None:
        print(text, flush=True)

    def value(self, value: object, prefix: str = "") -> None:
        fields = _fields(value)
        if self.as_json:  # nulls stay: a JSON reader wants every key, every time
            self._print(json.dumps({"type": type(value).__name__.lower(), **fields}, sort_keys=True))
        else:
            self._print(prefix + _text(fields))

    def frame(self, frame: vlp.Frame) -> None:
        if self.as_json:
            self._print(json.dumps({"line": frame.raw.decode("ascii").rstrip(), "seq": frame.seq,
                                    "verb": frame.verb, "args": frame.as_dict()}, sort_keys=True))
        else:
            self._print(frame.raw.decode("ascii").rstrip())
            self._print(f"  seq={frame.seq} verb={frame.verb}")
            for key, value in frame.args:
                self._print(f"  {key}={value}")

    def notices(self, link: HostLink, quiet: bool = False) -> None:
        for notice in link.take_notices():
            if quiet:
                continue
            if isinstance(notice, LinkUp):
                self._note("link_up", f"link up: boot={notice.hello.boot} fw={notice.hello.fw}",
                           boot=notice.hello.boot)
            elif isinstance(notice, BoardRebooted):
                self._note("board_rebooted", f"board rebooted: boot {notice.old_boot} -> {notice.new_boot}",
                           old_boot=notice.old_boot, new_boot=notice.new_boot)
            else:
                self._note("link_down", f"link down: {notice.reason}", reason=notice.reason)

    def _note(self, kind: str, text: str, **fields: object) -> None:
        self._print(json.dumps({"type": kind, **fields}, sort_keys=True) if self.as_json else text)

    def trace(self, t: float, direction: str, raw: bytes, decoded: object, note: str) -> None:
        rec = TraceRecord(t, direction, raw, decoded, note)  # type: ignore[arg-type]
        self._print(record_json(rec) if self.as_json else format_record(rec))

    def error(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _fail(code: int, message: str) -> int:
    print(f"vending board: {message}", file=sys.stderr, flush=True)
    return code
