"""Probe requests (``/health``, ``/ready``) in uvicorn's access log at debug level, not info: an
orchestrator polls them every few seconds, and they would drown the requests that matter."""

from __future__ import annotations

import logging

PROBE_PATHS = frozenset({"/health", "/ready"})
ACCESS_LOGGER = "uvicorn.access"


class ProbesAtDebug(logging.Filter):
    """Lowers access-log records of probe requests to DEBUG, and drops them unless the access
    logger is enabled for DEBUG (``--log-level debug``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access records: (client address, method, path with query, HTTP version, status)
        if not isinstance(args, tuple) or len(args) < 3 or not isinstance(args[2], str):
            return True
        if args[2].split("?", 1)[0] not in PROBE_PATHS:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def log_probes_at_debug() -> None:
    """Install the filter on uvicorn's access logger (after uvicorn has configured its logging)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, ProbesAtDebug) for f in logger.filters):
        logger.addFilter(ProbesAtDebug())
