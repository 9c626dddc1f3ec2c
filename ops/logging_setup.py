"""Structured JSON logs: one object per line with time, level, logger, event and fields.

Call sites log an event name as the message and the fields as ``extra``::

    log.info("model_loaded", extra={"version": "v2"})
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name,
               "event": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", stream=sys.stderr) -> None:
    """Route the root logger to ``stream`` as JSON lines at ``level``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "faust", "mode", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # torch's ONNX exporter warns about torchvision ops it cannot register; we use none.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
