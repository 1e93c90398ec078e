"""The machine key file: 32 secret bytes stored as 64 hex characters.

Every signature in the contract (MQTT, orders API, offline QR) hangs on this key, so the loader
is strict: a key that others could read is a key an attacker could have copied, and a key that
is silently truncated or padded would make every payment fail verification in confusing ways.
No message here ever contains key material, only the path, the size and the fix.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
_HEX_CHARS = KEY_BYTES * 2
# Far more than a valid file; stops us reading a mistakenly configured huge file into memory.
_READ_LIMIT = 4096
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class KeyFileError(Exception):
    """The key file is missing, unsafe or malformed. `path` names it; the message says the fix."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = str(path)
        super().__init__(message)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read and check the key file; return the 32-byte key or raise KeyFileError."""
    p = str(path)
    try:
        # Open first and fstat the open file, so the checks and the read concern the same file.
        # O_NONBLOCK: a FIFO put in the key's place must not hang the daemon at start.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyFileError(p, f"key file {p} does not exist; create it with the machine's "
                              f"64-hex-digit key (the cloud has the same key) and chmod 600") from None
    except PermissionError:
        raise KeyFileError(p, f"key file {p} cannot be read by this user; it must be owned by the "
                              f"user the daemon runs as (chown) with mode 600") from None
    except OSError as e:
        raise KeyFileError(p, f"key file {p} cannot be opened: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise KeyFileError(p, f"key file {p} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_mode & 0o077:
            raise KeyFileError(
                p, f"key file {p} is readable or writable by group or others "
                   f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}")
        data = f.read(_READ_LIMIT + 1)
    return _parse(p, data)


def _parse(p: str, data: bytes) -> bytes:
    # Exactly one optional line ending: anything else is a sign of a wrong or edited file.
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise KeyFileError(p, f"key file {p} is empty; it must hold 64 hex digits (32 bytes)")
    if len(data) > _READ_LIMIT:
        raise KeyFileError(p, f"key file {p} is far too large; it must hold 64 hex digits (32 bytes)")
    for i, byte in enumerate(data):
        if chr(byte) not in _HEX_DIGITS:
            # The position helps the operator; the character itself could be part of a key.
            raise KeyFileError(p, f"key file {p} has a character that is not a hex digit at "
                                  f"position {i + 1}; it must hold exactly 64 hex digits")
    if len(data) != _HEX_CHARS:
        raise KeyFileError(p, f"key file {p} holds {len(data)} hex digits; it must hold exactly "
                              f"64 (32 bytes)")
    return bytes.fromhex(data.decode("ascii"))


def write_key(path: str | os.PathLike[str], *, overwrite: bool = False) -> bytes:
    """Create a new random key file with mode 0600, atomically; return the key.

    Refuses to replace an existing key unless `overwrite`: a machine whose key changed no longer
    matches the cloud, and every payment would be rejected.
    """
    target = Path(path)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        raise KeyFileError(target, f"cannot create a key file in {target.parent}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # the umask can only remove bits, but be explicit
            f.write(key.hex().encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target exists, so two writers can never both "win".
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise KeyFileError(target, f"key file {target} already exists; refusing to replace "
                                           f"the machine's key") from None
            except OSError as e:
                raise KeyFileError(target, f"cannot create key file {target}: {e.strerror}") from None
        _fsync_dir(target.parent)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return key


def _fsync_dir(directory: Path) -> None:
    # Without this a power cut right after creation may lose the directory entry.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
