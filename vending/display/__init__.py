"""Customer displays. Each one takes immutable `View`s through `show(view)`, which never blocks
the caller, and reports touches as `Select` / `Cancel` through `on_input`.

Every display has start(), stop() and show(view); views shown before start() are kept and drawn
once it runs. Several controllers, each with its own display, can live in one process: nothing
here is module-level state.
"""
from __future__ import annotations

from typing import Callable, Protocol

from vending.display.view import (Cancel, ProductView, Screen, Select, View, format_money,
                                  view_to_json)

KINDS = ("kiosk", "terminal", "png", "none")

__all__ = ["Cancel", "Display", "KINDS", "NullDisplay", "ProductView", "Screen", "Select", "View",
           "format_money", "make_display", "view_to_json"]


class Display(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def show(self, view: View) -> None: ...


class NullDisplay:
    """For machines with no customer screen (board keys and LEDs only) and for tests."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def show(self, view: View) -> None:
        if not isinstance(view, View):
            raise TypeError(f"show() takes a View, got {type(view).__name__}")


def make_display(kind: str, *, on_input: Callable[[object], None] | None = None,
                 host: str = "127.0.0.1", port: int = 8080, png_path=None,
                 lang: str = "zh") -> Display:
    """Build (not start) the display a config names. Bad settings raise ValueError with the
    reason; nothing is bound or written until start()."""
    if kind == "kiosk":
        from vending.display.kiosk import KioskServer
        if on_input is None:
            raise ValueError("the kiosk display needs on_input: it is a touch screen")
        return KioskServer(host, port, on_input, lang=lang)
    if kind == "terminal":
        from vending.display.terminal import TerminalDisplay
        return TerminalDisplay()
    if kind == "png":
        from vending.display.pngfile import PngDisplay
        if png_path is None:
            raise ValueError("the png display needs png_path")
        return PngDisplay(png_path)
    if kind in ("none", "null"):
        return NullDisplay()
    raise ValueError(f"unknown display kind {kind!r}; choose one of {', '.join(KINDS)}")
