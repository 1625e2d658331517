"""Structured logs: one JSON object per line, for the log pipelines operators already run
(``MSTCRYPT_LOG_FORMAT=json``; ``MSTCRYPT_LOG_LEVEL``, default ``INFO``).

Each line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``msg``, and
the ``extra`` fields a call passes; an exception adds its type only (``exc_type``):
never a traceback, whose frames could show values. Messages are the platform's own,
which never carry secrets (DESIGN.md); this formatter adds nothing from the request.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key in out or key.startswith("_"):
                continue
            out[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def configure_logging(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Set up the root logger from the environment. Returns the options to pass to
    uvicorn (with JSON: its own logging configuration off, so its loggers propagate to
    the JSON handler)."""
    env = os.environ if environ is None else environ
    fmt = env.get("MSTCRYPT_LOG_FORMAT", "text").lower()
    level = env.get("MSTCRYPT_LOG_LEVEL", "INFO").upper()
    if fmt not in ("text", "json"):
        from mstcrypt.errors import PolicyError

        raise PolicyError("MSTCRYPT_LOG_FORMAT is text or json")
    if fmt == "text":
        return {}
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    return {"log_config": None}
