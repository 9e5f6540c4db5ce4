"""Logging set-up: `--log-format text|json` and `-v` levels.

Log lines carry cluster data (object names, label values, error texts from
the API server), so both formats keep one record on one line and bound its
size: every value interpolated into a message, and every ``extra=`` field, is
cut at ``MAX_VALUE_CHARS``; a whole message at ``MAX_MESSAGE_CHARS``. In text
format, control characters (a name with ``\\n`` could forge a line) are shown
escaped (``\\n``, ``\\x1b``, ``\\u2028``) and traceback lines are indented, so
only the first line of a record starts at column 0. JSON escapes them itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Final

#: Longest value (an argument of the message or an ``extra=`` field) written whole.
MAX_VALUE_CHARS: Final = 512
#: Longest message (after interpolation) written whole.
MAX_MESSAGE_CHARS: Final = 4096
#: Longest traceback written whole.
MAX_TRACEBACK_CHARS: Final = 16384

# Attributes every LogRecord has; anything else was passed with ``extra=`` and
# belongs in the structured output.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# C0 controls, DEL, C1 controls and the Unicode line and paragraph separators: all end or redraw a line somewhere.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_SCALARS = (int, float, bool, type(None))


def truncate(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut at ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more chars]"


def escape_controls(text: str) -> str:
    """Control characters as visible escapes: ``\\n``, ``\\x1b``, ``\\u2028``."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _bounded_arg(value: Any) -> Any:
    """A message argument no longer than MAX_VALUE_CHARS once formatted (numbers stay numbers for %d)."""
    if isinstance(value, _JSON_SCALARS):
        return value
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
        text = f"<unprintable {type(value).__name__}>"
    return truncate(text)


def bounded_message(record: logging.LogRecord) -> str:
    """The record's message with each argument and the whole capped (not escaped)."""
    args = record.args
    if isinstance(args, dict):
        bounded: Any = {key: _bounded_arg(value) for key, value in args.items()}
    elif args:
        bounded = tuple(_bounded_arg(value) for value in args)
    else:
        bounded = None
    template = str(record.msg)
    try:
        message = template % bounded if bounded is not None else template
    except (TypeError, ValueError, KeyError):
        # Mismatched arguments: show what was passed rather than lose the record.
        message = f"{template} {bounded!r}"
    return truncate(message, MAX_MESSAGE_CHARS)


def _bounded_field(value: Any) -> Any:
    """An ``extra=`` value for JSON: itself when small, else its JSON text cut short."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, str):
        return truncate(value)
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return value if len(text) <= MAX_VALUE_CHARS and not isinstance(value, (bytes, bytearray)) else truncate(text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, one line per record (tracebacks indented under it)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {escape_controls(bounded_message(record))}"
        extra = []
        if record.exc_info:
            extra.append(self.formatException(record.exc_info))
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for text in extra:
            lines = truncate(text, MAX_TRACEBACK_CHARS).splitlines()
            line += "".join("\n    " + escape_controls(part) for part in lines)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": bounded_message(record),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[truncate(str(key), 64)] = _bounded_field(value)
        if record.exc_info:
            entry["error"] = truncate(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return json.dumps(entry, default=str)


def verbosity_level(verbosity: int) -> int:
    """-v 0: warnings and errors plus our info lines; 1: info everywhere; 2+: debug."""
    return logging.INFO if verbosity <= 1 else logging.DEBUG


def configure_logging(log_format: str = "text", verbosity: int = 0, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "text":
        handler.setFormatter(TextFormatter())
    else:
        raise ValueError(f"unknown log format {log_format!r} (expected text or json)")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if verbosity == 0 else verbosity_level(verbosity))
    # Our own one-line-per-event info logs (syncs, reconnects) are always on.
    logging.getLogger("kube_netpol").setLevel(verbosity_level(verbosity))
