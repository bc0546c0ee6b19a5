"""Probe requests are logged at debug level by uvicorn's access logger; other requests at info."""

from __future__ import annotations

import logging

import pytest

from flare_seg.service.api.access_log import ACCESS_LOGGER, ProbesAtDebug, log_probes_at_debug


def _access_record(path: str) -> logging.LogRecord:
    return logging.LogRecord(
        ACCESS_LOGGER, logging.INFO, "h11_impl.py", 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200), None,
    )  # fmt: skip


@pytest.fixture
def access_logger():
    logger = logging.getLogger(ACCESS_LOGGER)
    filters, level = list(logger.filters), logger.level
    yield logger
    logger.filters[:] = filters
    logger.setLevel(level)


def test_probes_go_to_debug_and_other_requests_stay_info(access_logger, caplog) -> None:
    log_probes_at_debug()
    log_probes_at_debug()  # once only
    assert sum(isinstance(f, ProbesAtDebug) for f in access_logger.filters) == 1
    access_logger.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        for path in ("/health", "/ready", "/ready?x=1", "/segment", "/jobs/abc"):
            access_logger.handle(_access_record(path))
    assert [r.args[2] for r in caplog.records] == ["/segment", "/jobs/abc"]
    assert {r.levelno for r in caplog.records} == {logging.INFO}
    caplog.clear()
    access_logger.setLevel(logging.DEBUG)
    with caplog.at_level(logging.DEBUG, logger=ACCESS_LOGGER):
        access_logger.handle(_access_record("/health"))
    assert [(r.args[2], r.levelname) for r in caplog.records] == [("/health", "DEBUG")]


def test_other_records_pass_untouched() -> None:
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "x", 1, "plain message", None, None)
    assert ProbesAtDebug().filter(record) and record.levelno == logging.INFO
