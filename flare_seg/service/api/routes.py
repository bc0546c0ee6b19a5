"""The routes: probes (/health, /ready, /metrics), /models, /segment and /jobs.

``public_router`` needs no token; ``router`` requires the API token when one is configured.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from flare_seg.service.api.deps import ServiceDep, require_token
from flare_seg.service.api.errors import ERROR_RESPONSES, http_error
from flare_seg.service.api.jobs import Job, WorkerDraining
from flare_seg.service.api.schemas import (
    ErrorBody,
    HealthInfo,
    JobCreated,
    JobInfo,
    JobStatus,
    ReadyInfo,
    SegmentationSummary,
)
from flare_seg.service.api.service import ClientGone, Service, now
from flare_seg.service.api.uploads import UPLOAD_FIELD, Upload, check_upload_headers
from flare_seg.service.inputs import DICOM_SEG, NIFTI, SEG_SUFFIX
from flare_seg.service.io import InputError
from flare_seg.service.storage import is_disk_problem, storage_error

logger = logging.getLogger(__name__)

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "a 3D CT image, .nii.gz or .nii (NIfTI-1 or -2), or a .zip "
                            "of DICOM files (one series is chosen: CT, images only, axial, most slices)",
                        }
                    },
                }
            }
        },
    }
}
_MASK_HEADERS = {
    "X-Organ-Volumes-mL": {"description": "JSON object: organ -> volume in mL", "schema": {"type": "string"}},
    "X-Model-Version": {"description": "version of the models used", "schema": {"type": "string"}},
    "X-Inference-Seconds": {"description": "segmentation wall time, seconds", "schema": {"type": "string"}},
    "X-Warnings": {
        "description": "JSON array of sentences: what to know about the mask ([] when nothing)",
        "schema": {"type": "string"},
    },
}

_STATISTICS_HELP = (
    "true: the JSON summary also has per-organ statistics (voxel count, volume, HU mean and standard "
    "deviation, box and centroid in LPS mm)"
)

public_router = APIRouter(tags=["probes"])
router = APIRouter(dependencies=[Depends(require_token)], responses={401: ERROR_RESPONSES[401]})


def mask_filename(case: str, output: str = NIFTI) -> str:
    """The mask's download name: ``<case>_mask.nii.gz``, or ``<case>.seg.dcm`` for a DICOM SEG;
    never the uploaded file's own name (the case is that name without its extension), so
    ``curl -OJ`` next to the CT cannot overwrite it."""
    return f"{case}{SEG_SUFFIX}" if output == DICOM_SEG else f"{case}_mask.nii.gz"


def _mask_headers(summary: SegmentationSummary, output: str = NIFTI) -> dict[str, str]:
    volumes = {name: round(ml, 3) for name, ml in summary.volumes_ml.items()}
    return {
        "Content-Disposition": f'attachment; filename="{mask_filename(summary.case, output)}"',
        "X-Organ-Volumes-mL": json.dumps(volumes, separators=(",", ":"), ensure_ascii=True),
        "X-Model-Version": summary.model_version.encode("ascii", "replace").decode("ascii"),
        "X-Inference-Seconds": f"{summary.inference_seconds:.3f}",
        "X-Warnings": json.dumps(summary.warnings, separators=(",", ":"), ensure_ascii=True),
    }


def _requested(format_: str | None, accept: str) -> str | None:
    """What the client asked for: "json", "nifti" or "dicom-seg" (the ``format`` parameter, else
    the Accept header), or None for the input's default (NIfTI for NIfTI, DICOM SEG for DICOM)."""
    if format_ is not None:
        return format_
    accept = accept.lower()
    if "application/dicom" in accept:
        return DICOM_SEG
    if "application/json" in accept and "application/gzip" not in accept:
        return "json"
    if "application/gzip" in accept:
        return NIFTI
    return None


def _mask_output(requested: str | None, upload: Upload) -> str:
    """The mask encoding for ``upload``: the requested one, or the input's default; 422 for a
    DICOM SEG of NIfTI input (a SEG references the images it was made from)."""
    output = requested if requested in (NIFTI, DICOM_SEG) else (DICOM_SEG if upload.is_zip else NIFTI)
    if output == DICOM_SEG and not upload.is_zip:
        raise http_error(
            422,
            f"{upload.display_name}: a DICOM SEG needs DICOM input (a .zip of the series); "
            "ask for format=nifti for NIfTI input",
        )
    return output


def _media_type(output: str) -> str:
    return "application/dicom" if output == DICOM_SEG else "application/gzip"


def _job_urls(request: Request, job_id: str) -> tuple[str, str]:
    return (
        request.url_for("get_job", job_id=job_id).path,
        request.url_for("get_job_result", job_id=job_id).path,
    )


def _job_info(request: Request, job: Job) -> JobInfo:
    status_url, result_url = _job_urls(request, job.id)
    return JobInfo(
        id=job.id,
        status=job.status,
        status_url=status_url,
        result_url=result_url,
        case=job.case,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        expires_at=job.expires_at,
        summary=job.summary,
        error=job.error,
    )


# --------------------------------------------------------------------------------------------------
# Routes


@public_router.get("/health", response_model=HealthInfo, summary="liveness: 200 while the process runs")
async def health() -> HealthInfo:
    return HealthInfo()


@public_router.get(
    "/ready",
    response_model=ReadyInfo,
    responses={503: {"model": ReadyInfo, "description": "models not loaded (yet)"}},
    summary="readiness: 200 once the models are loaded and warmed up",
)
async def ready(request: Request) -> JSONResponse:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is not None and service.segmenter is not None:
        info = ReadyInfo(status="ready", model_version=service.segmenter.model_version)
        return JSONResponse(info.model_dump(mode="json"))
    if service is not None and service.load_error is not None:
        info = ReadyInfo(status="failed", detail=f"models failed to load: {service.load_error}")
    else:
        info = ReadyInfo(status="loading", detail="models are still loading")
    return JSONResponse(info.model_dump(mode="json"), status_code=503, headers={"Retry-After": "10"})


@router.get("/metrics", summary="Prometheus metrics (text format)", tags=["probes"])
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", summary="the model manifest (contract, provenance, metrics)", tags=["models"])
async def models(service: ServiceDep) -> JSONResponse:
    segmenter = service.require_ready()
    return JSONResponse(jsonable_encoder(segmenter.manifest))


@router.post(
    "/segment",
    summary="segment one CT image and wait for the result",
    description=(
        "Upload a 3D CT image (.nii.gz or .nii), or a .zip of DICOM files, in the multipart form field "
        "`file`. Answers the uint8 label mask on exactly the input's grid, with the organ volumes in the "
        "`X-Organ-Volumes-mL` header: as a gzip NIfTI (`?format=nifti` or `Accept: application/gzip`; "
        "the default for NIfTI input) or as a DICOM SEG referencing the source series (`?format=dicom-seg` "
        "or `Accept: application/dicom`; the default for DICOM input). With `?format=json` (or "
        "`Accept: application/json`): a JSON summary (volumes, bounding boxes, timings, model version, "
        "the DICOM series chosen) without the mask."
    ),
    response_model=None,
    responses={
        200: {
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/SegmentationSummary"}},
            },
            "headers": _MASK_HEADERS,
            "description": "the label mask (.nii.gz or DICOM SEG), or the JSON summary",
        },
        **{code: ERROR_RESPONSES[code] for code in (400, 408, 413, 415, 422, 503, 507)},
    },
    openapi_extra=_UPLOAD_BODY,
    tags=["segmentation"],
)
async def segment(
    request: Request,
    service: ServiceDep,
    format_: Annotated[
        Literal["nifti", "dicom-seg", "json"] | None,
        Query(
            alias="format",
            description="nifti: the mask as .nii.gz (default for NIfTI input); dicom-seg: the mask as "
            "DICOM SEG (default for DICOM input); json: the summary only",
        ),
    ] = None,
    statistics: Annotated[bool, Query(description=_STATISTICS_HELP)] = False,
) -> Response:
    service.require_ready()
    service.check_accepting()
    check_upload_headers(request, service.max_upload_bytes)
    requested = _requested(format_, request.headers.get("accept", ""))
    as_json = requested == "json"
    service.check_room()
    upload = await service.receive_and_check(request, scan_data=False)
    try:
        output = _mask_output(None if as_json else requested, upload)
        ticket = service.admit()
        work = functools.partial(
            service.segment_file,
            upload.path,
            upload.display_name,
            upload.case,
            encode=not as_json,
            result_path=None,
            output=NIFTI if as_json else output,
            statistics=statistics,
        )
        outcome = await service.result_unless_abandoned(request, service.worker.run(ticket, work))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it: the client has gone
    except (InputError, HTTPException):
        raise
    except WorkerDraining:
        raise http_error(503, "the server is shutting down; send the request again later") from None
    except OSError as e:
        if is_disk_problem(e):
            raise storage_error(e) from None
        logger.exception("segmentation failed")
        raise http_error(500, "internal error during segmentation") from None
    except Exception:
        logger.exception("segmentation failed")
        raise http_error(500, "internal error during segmentation") from None
    finally:
        upload.path.unlink(missing_ok=True)
    if as_json:
        return JSONResponse(outcome.summary.model_dump(mode="json"))
    return Response(
        outcome.mask_bytes, media_type=_media_type(output), headers=_mask_headers(outcome.summary, output)
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    summary="queue one CT image for segmentation; poll status_url, then fetch result_url",
    responses={**{code: ERROR_RESPONSES[code] for code in (400, 408, 413, 415, 422, 503, 507)}},
    openapi_extra=_UPLOAD_BODY,
    tags=["jobs"],
)
async def create_job(
    request: Request,
    service: ServiceDep,
    format_: Annotated[
        Literal["nifti", "dicom-seg"] | None,
        Query(
            alias="format",
            description="the result's encoding: nifti (default for NIfTI input) or dicom-seg (default "
            "for DICOM input)",
        ),
    ] = None,
    statistics: Annotated[bool, Query(description=_STATISTICS_HELP)] = False,
) -> JSONResponse:
    service.require_ready()
    service.check_accepting()
    check_upload_headers(request, service.max_upload_bytes)
    service.check_room()
    upload = await service.receive_and_check(request)
    try:
        output = _mask_output(format_, upload)
    except HTTPException:
        upload.path.unlink(missing_ok=True)
        raise
    job_id = uuid.uuid4().hex
    suffix = SEG_SUFFIX if output == DICOM_SEG else ".nii.gz"
    job = Job(
        id=job_id,
        case=upload.case,
        display_name=upload.display_name,
        upload_path=upload.path,
        result_path=service.results_dir / f"{job_id}{suffix}",
        created_at=now(),
        statistics=statistics,
    )
    ticket = None
    try:
        ticket = service.admit()
        service.jobs.add(job)
        service.worker.run(ticket, functools.partial(service.run_job, job.id))
    except BaseException:
        if ticket is not None:
            ticket.release_unless_submitted()
        if service.jobs.get(job.id) is None:
            upload.path.unlink(missing_ok=True)
        raise
    status_url, result_url = _job_urls(request, job.id)
    created = JobCreated(id=job.id, status=JobStatus.queued, status_url=status_url, result_url=result_url)
    return JSONResponse(created.model_dump(mode="json"), status_code=202, headers={"Location": status_url})


@router.get(
    "/jobs/{job_id}",
    response_model=JobInfo,
    responses={404: {"model": ErrorBody, "description": "unknown or expired job"}},
    summary="a job's status, with its summary once done or its error once failed",
    tags=["jobs"],
)
async def get_job(job_id: str, request: Request, service: ServiceDep) -> JobInfo:
    job = service.jobs.get(job_id)
    if job is None:
        raise http_error(404, f"unknown or expired job {job_id[:64]!r}")
    return _job_info(request, job)


@router.get(
    "/jobs/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/gzip": {}, "application/dicom": {}},
            "headers": _MASK_HEADERS,
            "description": "the label mask (.nii.gz, or DICOM SEG when the job was created for one)",
        },
        404: {"model": ErrorBody, "description": "unknown or expired job"},
        409: {"model": ErrorBody, "description": "the job is not done (queued, running or failed)"},
    },
    summary="a done job's label mask (.nii.gz or DICOM SEG)",
    tags=["jobs"],
)
async def get_job_result(job_id: str, service: ServiceDep) -> FileResponse:
    job = service.jobs.get(job_id)
    if job is None:
        raise http_error(404, f"unknown or expired job {job_id[:64]!r}")
    status, summary, error = job.status, job.summary, job.error
    if status == JobStatus.failed:
        raise http_error(409, f"job {job_id} failed: {error}")
    if status != JobStatus.done or summary is None:
        raise http_error(409, f"job {job_id} is {status}; poll its status until it is done")
    if not job.result_path.is_file():
        raise http_error(404, f"the result of job {job_id} has expired")
    output = DICOM_SEG if job.result_path.name.endswith(SEG_SUFFIX) else NIFTI
    return FileResponse(
        job.result_path, media_type=_media_type(output), headers=_mask_headers(summary, output)
    )
