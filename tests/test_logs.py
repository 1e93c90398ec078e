"""vending.logs: logfmt lines, journald detection, redaction whatever the caller did."""
from __future__ import annotations

import io
import json
import logging
import os
import re

import pytest

from tests.vectors import VECTORS
from vending.logs import (REDACTED, LogfmtFormatter, Redactor, is_secret_name, log_event,
                          remove_redactor, scrub, setup_logging, under_journald)

KEY = bytes.fromhex(VECTORS["machine_key_hex"])
PAYMENT_SIG = VECTORS["mqtt_payment"]["sig"]
TS = re.compile(r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.fixture
def logs(monkeypatch):
    """A fresh stream on the shared root handler; the handler and level are removed after."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    yield stream
    for h in list(root.handlers):
        if type(h).__name__ == "_LogfmtHandler":
            root.removeHandler(h)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_one_logfmt_line_per_record_with_timestamp(logs):
    setup_logging("DEBUG", logs)
    log = logging.getLogger("vending.sale")
    log_event(log, "vend done", order_id="o-1", slot=3, dispensed=True, refund=False, txn_id=None,
              amount=3.5, note="two words", quote='say "hi"', raw=b"\x00\x01")
    log.debug("multi\nline\tmessage")
    first, second = lines(logs)
    assert TS.match(first)
    assert first[TS.match(first).end():] == (  # type: ignore[union-attr]
        'level=INFO logger=vending.sale msg="vend done" order_id=o-1 slot=3 dispensed=true '
        'refund=false txn_id=null amount=3.5 note="two words" quote="say \\"hi\\"" raw=<2 bytes>')
    assert second.endswith('level=DEBUG logger=vending.sale msg="multi\\nline\\tmessage"')


def test_reserved_and_odd_field_names_do_not_clash(logs):
    setup_logging("INFO", logs, timestamps=False)
    log_event(logging.getLogger("x"), "m", msg="inner", level_="l", **{"we ird": 1, "ts": 2})
    assert lines(logs) == ['level=INFO logger=x msg="m" msg_=inner level_=l we_ird=1 ts_=2']


def test_log_event_level_and_exception(logs):
    setup_logging("INFO", logs, timestamps=False)
    log = logging.getLogger("vending.x")
    log_event(log, "hidden", level=logging.DEBUG)
    try:
        raise ValueError("bad thing")
    except ValueError as e:
        log_event(log, "failed", level=logging.ERROR, exc_info=e, slot=2)
    (line,) = lines(logs)
    assert line.startswith('level=ERROR logger=vending.x msg="failed" slot=2 exc="Traceback')
    assert "ValueError: bad thing" in line


def test_under_journald_no_timestamp_and_a_priority_prefix(logs, tmp_path, monkeypatch):
    path = tmp_path / "journal-stream"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert under_journald(stream)
        setup_logging("INFO", stream)
        logging.getLogger("vending.j").warning("door open")
        logging.getLogger("vending.j").info("ok")
        stream.flush()
    assert path.read_text().splitlines() == ['<4>level=WARNING logger=vending.j msg="door open"',
                                             '<6>level=INFO logger=vending.j msg="ok"']


def test_journal_stream_of_another_file_keeps_timestamps(logs, tmp_path, monkeypatch):
    # JOURNAL_STREAM is inherited by children whose stderr may be redirected elsewhere.
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    with open(tmp_path / "f", "w") as stream:
        assert not under_journald(stream)
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    with open(tmp_path / "f", "w") as stream:
        assert not under_journald(stream)
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not under_journald(logs)


def test_setup_is_idempotent_and_switches_stream(logs):
    h1 = setup_logging("INFO", logs)
    other = io.StringIO()
    h2 = setup_logging("WARNING", other)
    assert h1 is h2
    assert sum(type(h).__name__ == "_LogfmtHandler" for h in logging.getLogger().handlers) == 1
    logging.getLogger("a").info("dropped")
    logging.getLogger("a").warning("kept")
    assert logs.getvalue() == ""
    assert len(lines(other)) == 1 and 'msg="kept"' in other.getvalue()


def test_bad_level_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("LOUD")


@pytest.mark.parametrize("name,secret", [
    ("key", True), ("sig", True), ("signature", True), ("password", True), ("secret", True),
    ("token", True), ("machine_key", True), ("X-Signature", True), ("api.token", True),
    ("key_file", False), ("password_file", False), ("slot", False), ("monkey", False)])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_secret_named_fields_are_redacted_without_a_redactor(logs):
    setup_logging("INFO", logs, timestamps=False)
    log_event(logging.getLogger("s"), "login", password="hunter2", machine_key="abc", sig=PAYMENT_SIG,
              key_file="/etc/vending/machine.key", token=12345)
    (line,) = lines(logs)
    assert line == ('level=INFO logger=s msg="login" password=[REDACTED] machine_key=[REDACTED] '
                    'sig=[REDACTED] key_file=/etc/vending/machine.key token=[REDACTED]')


@pytest.mark.parametrize("text,leak", [
    (json.dumps({**VECTORS["mqtt_payment"]["payload_without_sig"], "sig": PAYMENT_SIG}), PAYMENT_SIG),
    (VECTORS["offline_qr"]["url"], VECTORS["offline_qr"]["sig"]),
    ("X-Signature: " + VECTORS["http_signature"]["x_signature"], VECTORS["http_signature"]["x_signature"]),
    ("{'sig': 'abcdef', 'amount': 1}", "abcdef"),
    ("loaded key " + VECTORS["machine_key_hex"], VECTORS["machine_key_hex"]),
    ("upper " + VECTORS["machine_key_hex"].upper() + "ff", VECTORS["machine_key_hex"].upper()),
    ("password=hunter2 user=bob", "hunter2"),
])
def test_fixed_rules_in_messages(logs, text, leak):
    setup_logging("INFO", logs, timestamps=False)
    logging.getLogger("m").info("got %s", text)
    out = logs.getvalue()
    assert leak not in out and REDACTED in out
    assert scrub(scrub(text)) == scrub(text)  # idempotent: a second pass changes nothing


def test_ordinary_text_is_left_alone():
    text = 'kind=key slot=3 order_id=o-20261125-0001 amount=350 vend_id=v1a2b3c4d "state":"paid"'
    assert scrub(text) == text


def test_registered_secrets_are_removed_in_every_form(logs):
    r = Redactor()
    r.add(KEY)
    r.add("hunter2")
    r.add("")  # ignored, not a pattern that matches everywhere
    setup_logging("INFO", logs, r, timestamps=False)
    log = logging.getLogger("vending.r")
    import base64
    b64url = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
    log.info("broker said %s and %s", "pw hunter2!", b64url)
    log_event(log, "field", note="the password is hunter2", nested={"p": "hunter2"})
    try:
        raise RuntimeError("connect failed for hunter2")
    except RuntimeError:
        log.exception("oops")
    log.info("with stack", stack_info=True, extra={"x": 1})
    out = logs.getvalue()
    assert "hunter2" not in out and b64url not in out
    assert 'msg="broker said pw [REDACTED]! and [REDACTED]"' in out
    assert "note=\"the password is [REDACTED]\"" in out
    assert "RuntimeError: connect failed for [REDACTED]" in out
    assert len(lines(logs)) == 4  # every record, even with a traceback, is one line


def test_each_daemon_registers_its_own_secrets_and_can_leave(logs):
    a, b = Redactor(), Redactor()
    a.add("alpha-secret")
    b.add("bravo-secret")
    setup_logging("INFO", logs, a, timestamps=False)
    setup_logging("INFO", logs, b, timestamps=False)
    setup_logging("INFO", logs, b, timestamps=False)  # twice: still one filter
    handler = next(h for h in logging.getLogger().handlers if type(h).__name__ == "_LogfmtHandler")
    assert handler.filters.count(b) == 1
    log = logging.getLogger("multi")
    log.info("alpha-secret bravo-secret")
    remove_redactor(a)
    log.info("alpha-secret bravo-secret")
    first, second = lines(logs)
    assert first == 'level=INFO logger=multi msg="[REDACTED] [REDACTED]"'
    assert second == 'level=INFO logger=multi msg="alpha-secret [REDACTED]"'


def test_redactor_does_not_change_the_callers_fields(logs):
    r = Redactor()
    r.add("hunter2")
    setup_logging("INFO", logs, r, timestamps=False)
    fields = {"note": "hunter2"}
    logging.getLogger("f").info("m", extra={"log_fields": fields})
    assert fields == {"note": "hunter2"} and "hunter2" not in logs.getvalue()


def test_broken_format_args_still_log():
    # Tested on the filter and formatter directly: pytest's own capture handler raises on these.
    record = logging.LogRecord("b", logging.INFO, __file__, 1, "%d items", ("not a number",), None)
    assert LogfmtFormatter(timestamps=False).format(record) == \
        'level=INFO logger=b msg="\'%d items\' args=(\'not a number\',)"'
    assert Redactor().filter(record) and record.getMessage() == "'%d items' args=('not a number',)"


def test_formatter_alone_scrubs():
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "sig=%s", ("abc",), None)
    assert LogfmtFormatter(timestamps=False).format(record) == 'level=INFO logger=n msg="sig=[REDACTED]"'
