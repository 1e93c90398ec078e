"""The sans-I/O heart of the controller: events in, actions out.

Nothing in this package touches a socket, a port, a file or the clock. The shell
(`vending.controller`) looks facts up in the journal, feeds them in as events with the time,
and carries out the returned actions in order: a `Persist` is committed before any action
after it runs, which is how "durable before acting" holds.
"""
from vending.core.machine import Machine, Settings

__all__ = ["Machine", "Settings"]
