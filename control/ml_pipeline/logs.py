"""How the pipeline's processes log: one line per record on stderr, credentials removed (redaction.redact).

The server's lines carry the deployment name (ML_ENVIRONMENT) and, with --workers N, the worker index:
`2026-12-01 02:00:00,123 INFO [production] ml_pipeline.inference_server.server: serving ...`.
When something else configured logging first (pytest, a program embedding the pipeline) its handlers are
left alone.
"""

from __future__ import annotations

import logging
import sys

from ml_pipeline.redaction import redact

_MARK = "_voxguard_handler"


class RedactingFormatter(logging.Formatter):
    """A Formatter whose output (message, arguments, traceback) never holds a password."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record, redacted."""
        return redact(super().format(record))


def log_format(environment: str | None = None, worker: int | None = None) -> str:
    """The record format: time, level, [environment] and worker-i when given, logger name, message."""
    tags = [f"[{environment}]" if environment else "", f"worker-{worker}" if worker is not None else ""]
    label = " ".join(t.replace("%", "%%") for t in tags if t)
    return f"%(asctime)s %(levelname)s {label + ' ' if label else ''}%(name)s: %(message)s"


def configure_logging(level: int, environment: str | None = None, worker: int | None = None) -> None:
    """Log at `level` to stderr through a RedactingFormatter (re-labels the handler when called again)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _MARK, False)]
    if not ours and root.handlers:  # configured by someone else: keep their handlers
        return
    if not ours:
        stream = logging.StreamHandler(sys.stderr)
        setattr(stream, _MARK, True)
        root.addHandler(stream)
        ours = [stream]
    for handler in ours:
        handler.setFormatter(RedactingFormatter(log_format(environment, worker)))
    root.setLevel(level)
