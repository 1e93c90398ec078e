"""A real mosquitto on 127.0.0.1, for tests, benchmarks, the chaos soak and the demo.

Why a real broker and not a fake: the behaviours the money depends on (persistent sessions,
redelivery of un-acked QoS1 messages, Last Will, retained status, ACLs, TLS) live in the
broker, so only a broker can show our client uses them correctly.

The class is plain Python (no pytest) so scripts can use it too; `tests/fixtures/broker.py`
wraps it in fixtures. TLS material is supplied from outside (`tests/pki.py` makes a throwaway
CA) because shipped code must never mint certificates.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

DEFAULT_BINARY = "/usr/sbin/mosquitto"
_PASSWD_BINARY = "mosquitto_passwd"


class BrokerUnavailable(RuntimeError):
    """The mosquitto binary is missing: callers decide whether that skips or fails."""


class BrokerError(RuntimeError):
    """mosquitto did not start, or died; the message carries the tail of its log."""


class Pki(Protocol):
    """What the broker needs from a CA helper (tests/pki.py provides one)."""

    ca_path: Path
    server_cert: Path
    server_key: Path

    def client(self, user: str) -> tuple[Path, Path]: ...


def find_binary(binary: str | None = None) -> str:
    """Path of the mosquitto binary, or BrokerUnavailable naming what was looked for."""
    candidates = [binary] if binary else [DEFAULT_BINARY, "mosquitto"]
    for c in candidates:
        found = shutil.which(c) if c else None
        if found:
            return found
    raise BrokerUnavailable(f"mosquitto binary not found (looked for {', '.join(map(str, candidates))}); "
                            "install Debian package 'mosquitto'")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (never the system broker's 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (1883, 8883):
            return port


def spawn_listening(argv: list[str], log_path: Path, host: str, port: int, timeout: float,
                    name: str, log_tail) -> subprocess.Popen:
    """Start a broker process logging to log_path; return once it accepts TCP on host:port,
    or kill it and raise BrokerError with the log's tail."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"{name} exited with {proc.returncode} at start:\n{log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                raise BrokerError(f"{name} did not listen on {host}:{port} within {timeout}s:\n"
                                  f"{log_tail()}") from None
            time.sleep(0.02)


class BrokerProcess:
    """The lifecycle every sandbox broker shares: one child process on 127.0.0.1:<port> that
    logs to `log_path`. Subclasses say how to launch it (`_argv`) and set `name`, `dir`,
    `_own_dir`, `host`, `port`, `tls`, `start_timeout` and `log_path` in their __init__."""

    name = "broker"
    dir: Path
    log_path: Path
    host: str
    port: int
    tls: bool
    start_timeout: float
    _own_dir: bool
    _proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self):
        """Start (again) on the same port with the same data dir; return once it accepts TCP."""
        if self.running:
            return self
        self._proc = spawn_listening(self._argv(), self.log_path, self.host, self.port,
                                     self.start_timeout, self.name, self.log_tail)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a clean shutdown (mosquitto writes its persistence file first)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, like a power cut: whatever was not saved yet is lost."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()  # SIGKILL also ends a paused (SIGSTOPped) process
            self._proc.wait()
        self._proc = None

    def restart(self):
        self.stop()
        return self.start()

    def close(self) -> None:
        """Kill (teardown needs no clean save) and delete the temp dir if we made it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port}, tls={self.tls}, running={self.running})"


class Mosquitto(BrokerProcess):
    """One mosquitto process bound to 127.0.0.1:<port>, with its own config and data dir.

    `users`: user names. With TLS each gets a client certificate (CN = user, which the broker
    takes as the user name); a Mapping user -> password also writes a password file.
    `acl`: a Path (or path string) of an ACL file such as config/mosquitto.acl, or its text.
    `conf_text`: a complete config to use instead of the generated one (to run the shipped
    config/mosquitto.conf with paths templated); it must listen on `self.port`.
    """

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, port: int | None = None,
                 tls: bool = False, pki: Pki | None = None, acl: str | Path | None = None,
                 users: Iterable[str] | Mapping[str, str] | None = None, persistence: bool = True,
                 autosave_interval: int = 1, conf_text: str | None = None,
                 binary: str | None = None, start_timeout: float = 10.0) -> None:
        self.binary = find_binary(binary)
        if tls and pki is None:
            raise ValueError("Mosquitto(tls=True) needs pki= (see tests/pki.py)")
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mosq-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.pki = pki
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.start_timeout = start_timeout
        self.users: dict[str, str | None] = (
            dict(users) if isinstance(users, Mapping) else {u: None for u in (users or ())})
        self.acl_path: Path | None = None
        if acl is not None:
            self.acl_path = self.dir / "acl"
            # A Path, or a str naming an existing file, is read; any other str is the text.
            is_file = isinstance(acl, Path) or ("\n" not in acl and Path(acl).is_file())
            text = Path(acl).read_text() if is_file else str(acl)
            self.acl_path.write_text(text)
        self.passwd_path: Path | None = None
        if any(p is not None for p in self.users.values()):
            self.passwd_path = self._write_passwords()
        self.conf_path = self.dir / "mosquitto.conf"
        self.conf_path.write_text(conf_text if conf_text is not None else self._render_conf())
        self.log_path = self.dir / "mosquitto.log"
        self._proc = None

    # -- TLS material for clients -------------------------------------------------------
    @property
    def ca_path(self) -> Path:
        if self.pki is None:
            raise ValueError("this broker has no TLS (made without pki)")
        return self.pki.ca_path

    def client_cert(self, user: str) -> tuple[Path, Path]:
        """(cert, key) paths of `user`'s client certificate, made on first use."""
        if self.pki is None:
            raise ValueError("this broker has no TLS (made without pki)")
        return self.pki.client(user)

    # -- config -------------------------------------------------------------------------
    def _render_conf(self) -> str:
        lines = [
            "# generated by vending.sandbox.broker; one throwaway broker",
            "per_listener_settings false",
            # Running as root in a container: without this mosquitto 2 drops to the
            # 'mosquitto' user, which cannot write our temp data dir.
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.port} 127.0.0.1",
            f"persistence {'true' if self.persistence else 'false'}",
            "set_tcp_nodelay true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {self.autosave_interval}",
            # Offline persistent sessions must keep every queued payment, not just 100.
            "max_queued_messages 10000",
            "log_dest stderr",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if self.tls:
            assert self.pki is not None
            for u in self.users:
                self.pki.client(u)  # make certs up front so tests can hand paths out freely
            lines += [
                f"cafile {self.pki.ca_path}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "use_username_as_clientid true",  # as config/mosquitto.conf, which says why
                "allow_anonymous false",
            ]
        elif self.passwd_path is not None:
            lines += [f"password_file {self.passwd_path}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_path is not None:
            lines.append(f"acl_file {self.acl_path}")
        return "\n".join(line for line in lines if line) + "\n"

    def _write_passwords(self) -> Path:
        path = self.dir / "passwd"
        path.write_text("")
        for user, pw in self.users.items():
            if pw is None:
                continue
            subprocess.run([shutil.which(_PASSWD_BINARY) or _PASSWD_BINARY, "-b", str(path), user, pw],
                           check=True, capture_output=True, timeout=30)
        return path

    # -- lifecycle beyond BrokerProcess ----------------------------------------------------
    name = "mosquitto"

    def _argv(self) -> list[str]:
        return [self.binary, "-c", str(self.conf_path)]

    def pause(self) -> None:
        """SIGSTOP: a hung broker. TCP still connects (the kernel accepts), nothing answers."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _saves(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count("Saving in-memory database")
        except OSError:
            return 0

    def wait_for_save(self, timeout: float = 10.0) -> None:
        """Block until mosquitto writes its persistence file once more (autosave_interval):
        after that, a kill() loses nothing that happened before this call."""
        before = self._saves()
        deadline = time.monotonic() + timeout
        while self._saves() <= before:
            if time.monotonic() > deadline or not self.running:
                raise BrokerError(f"no persistence save within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
