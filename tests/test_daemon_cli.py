"""`vending run` refuses to start on a bad config or an unsafe key file, saying why."""
from __future__ import annotations

import os
import subprocess
import sys

from vending.keyfile import write_key


def _run(config, timeout=30):
    return subprocess.run([sys.executable, "-m", "vending", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout)


def _config(tmp_path, extra=""):
    path = tmp_path / "machine.toml"
    path.write_text(f"""machine_id = "VM-0001"
key_file = "machine.key"
journal = "{tmp_path / 'journal.db'}"
{extra}
[serial]
port = "loop://"
[orders]
base_url = "http://127.0.0.1:9/api"
[offline_qr]
enabled = false
[display]
kind = "none"
[planogram.1]
product_id = "cola"
name_zh = "可乐"
name_en = "Cola"
price = 350
""", encoding="utf-8")
    return path


def test_a_bad_config_exits_78_naming_file_and_line(tmp_path):
    write_key(tmp_path / "machine.key")
    cfg = _config(tmp_path, extra="session_timeout = -5")
    r = _run(cfg)
    assert r.returncode == 78
    assert f"{cfg}:4:" in r.stderr and "session_timeout" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    key = write_key(tmp_path / "machine.key")
    os.chmod(tmp_path / "machine.key", 0o644)
    r = _run(_config(tmp_path))
    assert r.returncode == 78
    assert "machine.key" in r.stderr and "600" in r.stderr
    assert key.hex() not in r.stderr + r.stdout


def test_a_missing_config_is_one_plain_sentence(tmp_path):
    r = _run(tmp_path / "nope.toml")
    assert r.returncode == 78
    assert "nope.toml" in r.stderr and "Traceback" not in r.stderr
