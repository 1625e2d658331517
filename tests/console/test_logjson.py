"""Structured JSON logs (MSTCRYPT_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging

import pytest

from mstcrypt.errors import PolicyError
from mstcrypt.server.logjson import JsonFormatter, configure_logging


def test_json_lines() -> None:
    f = JsonFormatter()
    rec = logging.makeLogRecord(
        {
            "name": "mstcrypt.server",
            "levelno": 30,
            "levelname": "WARNING",
            "msg": "x %s",
            "args": ("y",),
            "source": "10.0.0.1",
            "count": 3,
            "obj": object(),
        }
    )
    line = json.loads(f.format(rec))
    assert (
        line["level"] == "warning" and line["msg"] == "x y" and line["logger"] == "mstcrypt.server"
    )
    assert line["source"] == "10.0.0.1" and line["count"] == 3 and line["obj"].startswith("<object")
    assert line["ts"].endswith("+00:00")
    try:
        raise KeyError("secret-value")
    except KeyError:
        import sys

        rec = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    line = json.loads(f.format(rec))
    assert line["exc_type"] == "KeyError" and "secret-value" not in f.format(rec)


def test_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    assert configure_logging({"MSTCRYPT_LOG_FORMAT": "text"}) == {}
    with pytest.raises(PolicyError):
        configure_logging({"MSTCRYPT_LOG_FORMAT": "xml"})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        assert configure_logging({"MSTCRYPT_LOG_FORMAT": "json"}) == {"log_config": None}
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("uvicorn.error").propagate
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
