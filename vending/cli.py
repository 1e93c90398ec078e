"""`vending` command line: one subcommand per module, imported only when used.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
Exit codes follow the technician CLI: 0 ok, 2 usage, 3 link down or timeout, 4 board ERR,
1 anything else that failed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "run": ("vending.daemon", "run the controller in the foreground (what systemd starts)"),
    "check-config": ("vending.check_config", "validate a machine config and report every problem"),
    "board": ("vending.board_cli", "technician tools for the dispensing board over VLP/1"),
    "journal": ("vending.journal_cli", "what the machine owes: payments not yet settled, vends running"),
    "demo": ("vending.demo", "a whole vending machine on embedded defaults"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one plain sentence."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; import just the chosen subcommand's module so one broken or slow module
    never takes the technician CLI down with it."""
    parser = _Parser(prog="vending", description="QR-payment vending controller")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in SUBCOMMANDS else None).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
