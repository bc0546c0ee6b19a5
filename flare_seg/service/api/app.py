"""The app factory, its lifespan (models loaded in the background on start) and ``serve``.

``create_app(settings)`` builds a FastAPI app; nothing is created at import time. The models are
loaded (and warmed up) when the app starts, on the inference thread; ``/ready`` answers 503 until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType

import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from flare_seg import __version__
from flare_seg.service.api.access_log import log_probes_at_debug
from flare_seg.service.api.docs import add_offline_docs
from flare_seg.service.api.errors import (
    input_error_handler,
    job_store_error_handler,
    storage_error_handler,
    validation_error_handler,
)
from flare_seg.service.api.jobs import JobStoreError
from flare_seg.service.api.metrics import Metrics, MetricsMiddleware
from flare_seg.service.api.routes import public_router, router
from flare_seg.service.api.segmenter import SegmenterFactory, load_pipeline_segmenter
from flare_seg.service.api.service import Service
from flare_seg.service.api.workfolder import WorkFolderInUse, check_work_folder
from flare_seg.service.io import InputError
from flare_seg.service.settings import ENV_PREFIX, Settings, SettingsError
from flare_seg.service.storage import StorageError

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 50  # uvicorn waits this long for in-flight requests after SIGTERM (compose allows 60)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
OnLoadFailure = Callable[[BaseException], None]


class ModelLoadError(RuntimeError):
    """The server stopped because the models could not be loaded."""


def create_app(
    settings: Settings,
    segmenter_factory: SegmenterFactory | None = None,
    *,
    on_load_failure: OnLoadFailure | None = None,
) -> FastAPI:
    """Build the app. Models are loaded in the background when the app starts (lifespan), not here.

    Args:
        settings: the service settings (see ``flare_seg.service.settings``).
        segmenter_factory: builds the segmenter from the settings (called on the inference thread);
            default ``load_pipeline_segmenter`` (the TensorFlow SavedModels in ``models_dir``).
        on_load_failure: called with the exception if loading the models fails (``serve`` uses it to
            stop the server; otherwise /ready stays 503 with the error).
    """
    metrics = Metrics()
    app = FastAPI(
        title="flare-seg",
        version=__version__,
        summary="Abdominal CT organ segmentation (liver, kidney, spleen, pancreas)",
        lifespan=_lifespan(settings, metrics, segmenter_factory or load_pipeline_segmenter, on_load_failure),
        docs_url=None,  # served by add_offline_docs, with local assets
        redoc_url=None,
    )
    add_offline_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(InputError, input_error_handler)
    app.add_exception_handler(StorageError, storage_error_handler)
    app.add_exception_handler(JobStoreError, job_store_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(public_router)
    app.include_router(router)
    return app


def _lifespan(
    settings: Settings, metrics: Metrics, factory: SegmenterFactory, on_load_failure: OnLoadFailure | None
) -> Lifespan:
    """Start: the work folder (locked, write-tested) with its job records, the service, model
    loading (then the jobs queued before the last stop) and job cleanup in the background.
    Stop: take no new work, wait for the running segmentation; queued jobs stay queued, and the
    work folder stays for the next start."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await anyio.to_thread.run_sync(Service.open, settings, metrics)
        app.state.service = service
        logger.info("work folder %s; queue size %d", service.folder.root, settings.queue_size)
        tasks = [
            asyncio.create_task(service.load_models(factory, on_load_failure), name="flare-seg-load-models"),
            asyncio.create_task(service.cleanup_loop(), name="flare-seg-job-cleanup"),
        ]
        try:
            yield
        finally:
            logger.info("shutting down: waiting for the running segmentation; queued jobs stay queued")
            service.begin_drain()
            await _cancel(tasks)
            await anyio.to_thread.run_sync(service.worker.shutdown)
            app.state.service = None
            service.close()

    return lifespan


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, which also tells the app to stop taking work as soon as SIGTERM or SIGINT
    arrives: uploads in progress end (503) and queued work stays queued, so that only the running
    segmentation is waited for."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service: Service | None = getattr(self._app.state, "service", None)
        if service is not None:
            service.begin_drain_threadsafe()
        super().handle_exit(sig, frame)


def serve(settings: Settings, segmenter_factory: SegmenterFactory | None = None) -> None:
    """Run the server with uvicorn until SIGINT/SIGTERM (blocking).

    ``segmenter_factory`` defaults to the TensorFlow pipeline (see ``create_app``).

    On SIGTERM the server stops accepting connections and new work at once: uploads in progress
    and requests still waiting are answered 503, queued jobs stay queued (they run after the next
    start), and the running segmentation finishes (up to ``GRACEFUL_SHUTDOWN_S`` seconds for a
    synchronous one).

    Raises:
        SettingsError: a bad path setting, or a work folder that cannot be written or is held by
            another server (checked with a real write before binding the port).
        ModelLoadError: the models could not be loaded (the server stops at once).
    """
    settings.check_paths()
    try:
        check_work_folder(settings.work_folder)
    except (StorageError, WorkFolderInUse) as e:
        raise SettingsError(f"{ENV_PREFIX}WORK_DIR: {e}") from None
    _configure_logging(settings.log_level)
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, segmenter_factory, on_load_failure=stop_on_failure)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )
    server = _DrainingServer(config, app)
    log_probes_at_debug()  # after uvicorn.Config, which sets up uvicorn's loggers
    server.run()
    if failures:
        raise ModelLoadError(
            f"could not load the models from {settings.models_dir}: {failures[0]}"
        ) from failures[0]


def _configure_logging(log_level: str) -> None:
    level = log_level.upper()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flare_seg").setLevel(level)
