"""Log lines stay one record per line and bounded, whatever cluster data they carry."""

from __future__ import annotations

import io
import json
import logging

import pytest

from kube_netpol.logs import MAX_MESSAGE_CHARS, MAX_VALUE_CHARS, configure_logging


@pytest.fixture
def emit():
    """emit(format) -> (logger, read()): a logger writing through the agent's formatter to a buffer."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kube_netpol").level)

    def make(log_format: str):
        stream = io.StringIO()
        configure_logging(log_format, 0, stream)
        return logging.getLogger("kube_netpol.test"), stream.getvalue

    yield make
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("kube_netpol").setLevel(saved[2])


FORGED = "web\n2024-01-01 00:00:00,000 INFO kube_netpol.agent: agent ready\r\x1b[2J\u2028x"


def test_a_name_with_newlines_cannot_forge_a_text_line(emit) -> None:
    log, read = emit("text")
    log.warning("refusing pod %s", FORGED)
    out = read()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "web\\n2024-01-01" in out and "\\r\\x1b[2J\\u2028x" in out


def test_a_message_built_by_the_caller_is_escaped_too(emit) -> None:
    log, read = emit("text")
    log.error(f"bad object {FORGED}")
    assert read().count("\n") == 1


def test_traceback_lines_are_indented_under_their_record(emit) -> None:
    log, read = emit("text")
    try:
        raise ValueError(f"value {FORGED}")
    except ValueError:
        log.exception("failed")
    lines = read().splitlines()
    assert lines[0].endswith("failed")
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:])
    assert "\\x1b" in "\n".join(lines)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_label_value_is_cut(emit, log_format: str) -> None:
    log, read = emit(log_format)
    huge = "v" * 1_000_000
    log.warning("pod x/a: label value %s is invalid", huge)
    out = read()
    assert len(out) < MAX_VALUE_CHARS + 200
    assert f"[{1_000_000 - MAX_VALUE_CHARS} more chars]" in out


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_message_is_cut(emit, log_format: str) -> None:
    log, read = emit(log_format)
    log.warning("x" * 100_000)
    assert len(read()) < MAX_MESSAGE_CHARS + 300


def test_json_keeps_one_line_and_caps_extra_fields(emit) -> None:
    log, read = emit("json")
    log.warning("pod %s", FORGED, extra={"resource": "r" * 10_000, "items": list(range(5000)), "count": 3})
    out = read()
    assert out.count("\n") == 1
    entry = json.loads(out)
    assert entry["msg"] == f"pod {FORGED}"  # JSON escapes control characters itself; the value is intact
    assert len(entry["resource"]) < MAX_VALUE_CHARS + 40
    assert isinstance(entry["items"], str) and len(entry["items"]) < MAX_VALUE_CHARS + 40
    assert entry["count"] == 3


def test_numbers_keep_their_format_codes(emit) -> None:
    log, read = emit("text")
    log.warning("synced %d addresses in %.1f ms", 12, 3.25)
    assert read().rstrip().endswith("synced 12 addresses in 3.2 ms")


def test_mismatched_arguments_still_give_a_line(emit) -> None:
    log, read = emit("text")
    log.warning("two values %s %s", "only-one")
    assert "two values" in read()
