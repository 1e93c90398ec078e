"""vending.keyfile: strict loading, safe creation, no key material in any message."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.vectors import VECTORS
from vending.keyfile import KeyFileError, load_key, write_key

TEST_KEY_HEX = VECTORS["machine_key_hex"]


def make(tmp_path: Path, content: bytes, mode: int = 0o600, name: str = "machine.key") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    os.chmod(p, mode)
    return p


def test_contract_test_key_loads(tmp_path):
    p = make(tmp_path, TEST_KEY_HEX.encode() + b"\n")
    assert load_key(p) == bytes.fromhex(TEST_KEY_HEX)


@pytest.mark.parametrize("content", [
    TEST_KEY_HEX.encode(), TEST_KEY_HEX.upper().encode() + b"\n", TEST_KEY_HEX.encode() + b"\r\n"])
def test_accepted_forms(tmp_path, content):
    assert load_key(make(tmp_path, content)) == bytes.fromhex(TEST_KEY_HEX)


def test_missing_file(tmp_path):
    with pytest.raises(KeyFileError) as ei:
        load_key(tmp_path / "nope.key")
    assert ei.value.path == str(tmp_path / "nope.key")
    assert str(ei.value).startswith(f"key file {tmp_path / 'nope.key'} does not exist")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o666])
def test_group_or_other_access_is_refused(tmp_path, mode):
    p = make(tmp_path, TEST_KEY_HEX.encode(), mode)
    with pytest.raises(KeyFileError) as ei:
        load_key(p)
    msg = str(ei.value)
    assert f"(mode {mode:04o})" in msg and f"chmod 600 {p}" in msg
    assert TEST_KEY_HEX not in msg


def test_owner_only_modes_are_accepted(tmp_path):
    assert load_key(make(tmp_path, TEST_KEY_HEX.encode(), 0o400)) == bytes.fromhex(TEST_KEY_HEX)


@pytest.mark.parametrize("content,fragment", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (TEST_KEY_HEX[:-2].encode(), "holds 62 hex digits; it must hold exactly 64"),
    (TEST_KEY_HEX.encode() + b"00", "holds 66 hex digits"),
    (TEST_KEY_HEX.encode() + b"\n\n", "not a hex digit at position 65"),
    (b" " + TEST_KEY_HEX.encode(), "not a hex digit at position 1"),
    (TEST_KEY_HEX[:10].encode() + b"g" + TEST_KEY_HEX[11:].encode(), "not a hex digit at position 11"),
    (b"0" * 5000, "far too large"),
], ids=lambda v: "" if isinstance(v, bytes) else v)  # no key text in tmp_path names
def test_malformed_content(tmp_path, content, fragment):
    p = make(tmp_path, content)
    with pytest.raises(KeyFileError) as ei:
        load_key(p)
    assert fragment in str(ei.value)
    # No key material in the message, not even a fragment of it.
    assert TEST_KEY_HEX[:8] not in str(ei.value)


def test_directory_and_fifo_are_refused(tmp_path):
    d = tmp_path / "k"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="is not a regular file"):
        load_key(d)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="is not a regular file"):  # and does not block
        load_key(fifo)


def test_unreadable_file_says_chown(tmp_path, monkeypatch):
    p = make(tmp_path, TEST_KEY_HEX.encode())

    def denied(*args, **kwargs):  # the tests may run as root, who can read anything
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(KeyFileError, match=r"cannot be read by this user; .*\(chown\) with mode 600"):
        load_key(p)


def test_write_key_creates_a_private_random_key(tmp_path):
    old = os.umask(0)  # even with a permissive umask the file must come out 0600
    try:
        key = write_key(tmp_path / "machine.key")
    finally:
        os.umask(old)
    p = tmp_path / "machine.key"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(key) == 32 and load_key(p) == key
    assert p.read_text() == key.hex() + "\n"
    assert write_key(tmp_path / "other.key") != key
    assert sorted(x.name for x in tmp_path.iterdir()) == ["machine.key", "other.key"]  # no temp left


def test_write_key_refuses_to_replace_a_key_unless_asked(tmp_path):
    p = tmp_path / "machine.key"
    first = write_key(p)
    with pytest.raises(KeyFileError, match="already exists"):
        write_key(p)
    assert load_key(p) == first
    second = write_key(p, overwrite=True)
    assert second != first and load_key(p) == second
    assert [x.name for x in tmp_path.iterdir()] == ["machine.key"]


def test_write_key_in_a_missing_directory(tmp_path):
    with pytest.raises(KeyFileError, match="cannot create a key file"):
        write_key(tmp_path / "no" / "machine.key")
