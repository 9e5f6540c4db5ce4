"""Logging set-up: `--log-format text|json` and `-v` levels."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed with ``extra=`` and
# belongs in the structured output.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def verbosity_level(verbosity: int) -> int:
    """-v 0: warnings and errors plus our info lines; 1: info everywhere; 2+: debug."""
    return logging.INFO if verbosity <= 1 else logging.DEBUG


def configure_logging(log_format: str = "text", verbosity: int = 0, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif log_format == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        raise ValueError(f"unknown log format {log_format!r} (expected text or json)")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if verbosity == 0 else verbosity_level(verbosity))
    # Our own one-line-per-event info logs (syncs, reconnects) are always on.
    logging.getLogger("kube_netpol").setLevel(verbosity_level(verbosity))
