"""`vending check-config FILE`: all problems on stderr as file:line, a secret-free summary on success."""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vending import check_config
from vending.keyfile import write_key

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "machine.example.toml"
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<msg>.+)$")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vending", "check-config", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def run_inline(path: Path) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    check_config.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = check_config.run(parser.parse_args([str(path)]), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def example(tmp_path: Path) -> Path:
    cfg = tmp_path / "machine.toml"
    shutil.copy(EXAMPLE, cfg)
    write_key(tmp_path / "machine.key")
    return cfg


def test_shipped_example_passes_and_summary_has_no_secrets(example):
    key_hex = (example.parent / "machine.key").read_text().strip()
    result = cli(str(example))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{example}: OK\n")
    assert "VM-0001" in out and "3 slots (1-3)" in out and "CNY" in out
    assert "mqtt://mqtt.example.com:1883" in out
    assert "https://api.example.com" in out and "https://pay.example.com" in out
    assert key_hex not in out and key_hex not in result.stderr


def test_several_problems_at_once_each_with_its_line(example):
    text = example.read_text()
    for old, new in [("baud = 115200", "baud = 115201"), ("price = 200", "price = 2.0"),
                     ('lang = "zh"', 'lang = "fr"'), ("keepalive = 30", "keep_alive = 30")]:
        assert old in text
        text = text.replace(old, new, 1)
    example.write_text(text)
    os.chmod(example.parent / "machine.key", 0o644)
    result = cli(str(example))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == f"{example}: 5 problems; the daemon would not start"
    found = [PROBLEM_LINE.match(line) for line in lines[:-1]]
    assert all(found), lines
    numbers = {int(m["line"]): m["msg"] for m in found}  # type: ignore[index]
    source = text.split("\n")

    def at(needle: str) -> int:
        return next(i for i, s in enumerate(source, 1) if s.startswith(needle))
    assert "chmod 600" in numbers[at("key_file")]
    assert "serial.baud must be a standard rate" in numbers[at("baud =")]
    assert numbers[at("price = 2.0")].startswith("planogram.2.price must be an integer number of minor units (fen)")
    assert "display.lang must be one of" in numbers[at("lang =")]
    assert numbers[at("keep_alive")] == "unknown key mqtt.keep_alive; did you mean keepalive?"
    assert {m["file"] for m in found} == {str(example)}  # type: ignore[index]


def test_tls_and_password_files_are_checked_and_never_printed(example):
    d = example.parent
    (d / "ca.pem").write_text("ca")
    (d / "mqtt.password").write_text("hunter2-very-secret\n")
    os.chmod(d / "mqtt.password", 0o600)
    text = example.read_text().replace('# ca = "ca.pem"', 'ca = "ca.pem"')
    text = text.replace('# username = "VM-0001"', 'username = "VM-0001"')
    text = text.replace('# password_file = "mqtt.password"', 'password_file = "mqtt.password"')
    example.write_text(text)
    code, out, err = run_inline(example)
    assert code == 0, err
    assert "mqtts://mqtt.example.com:8883, user VM-0001, password from file" in out
    assert "hunter2" not in out + err
    (d / "ca.pem").unlink()
    code, out, err = run_inline(example)
    assert code == 1 and out == ""
    assert f"mqtt.ca names {d / 'ca.pem'}, which does not exist" in err


def test_missing_config_file():
    result = cli("/nonexistent/machine.toml")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "/nonexistent/machine.toml: the config file does not exist"


def test_syntax_error(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('machine_id = "VM-1"\n[serial\n')
    code, out, err = run_inline(cfg)
    assert code == 1
    assert err.startswith(f"{cfg}:2: TOML syntax error: ")


def test_usage_error_exits_2():
    result = cli()
    assert result.returncode == 2
    assert "FILE" in result.stderr
