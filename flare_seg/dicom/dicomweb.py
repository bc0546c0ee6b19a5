"""Segmenting a study held by a DICOMweb server (a PACS): QIDO-RS to find its series, WADO-RS to
read them, STOW-RS to store the DICOM SEG back into the same study.

The series is chosen by the same rules as for a folder (``series.choose_series``), from the
servers' metadata: only the chosen series' instances are downloaded, into a private temporary
folder that is removed afterwards, and read by the same code as a folder on disk.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from flare_seg.dicom.seg import build_seg, write_seg_atomic
from flare_seg.dicom.series import (
    DicomFile,
    DicomInputError,
    SeriesChoice,
    choose_series,
    group_series,
    sop_instance_uid,
)
from flare_seg.dicom.volume import DicomVolume, read_dicom_volume

logger = logging.getLogger(__name__)


class DicomWebError(RuntimeError):
    """The DICOMweb server could not be reached or refused a request; the message says which."""


@dataclass(frozen=True)
class StudyResult:
    """What ``segment_study`` did: the series it chose (and why) and the SEG it stored."""

    study_uid: str
    series_uid: str
    reason: str
    seg_series_uid: str
    seg_sop_instance_uid: str
    labels_zyx: np.ndarray
    warnings: tuple[str, ...] = ()


TOKEN_ENV = "FLARE_SEG_DICOMWEB_TOKEN"  # a bearer token for the DICOMweb server
USER_ENV, PASSWORD_ENV = "FLARE_SEG_DICOMWEB_USER", "FLARE_SEG_DICOMWEB_PASSWORD"  # HTTP basic auth


def credentials_from_env(env: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The Authorization header (bearer token) and basic-auth pair the environment gives, if any:
    credentials come from the environment, never from the command line (which others can see)."""
    headers = {"Authorization": f"Bearer {env[TOKEN_ENV]}"} if env.get(TOKEN_ENV) else {}
    user = env.get(USER_ENV)
    return headers, (user, env.get(PASSWORD_ENV, "")) if user else None


def make_client(
    url: str,
    *,
    timeout_s: float = 60.0,
    attempts: int = 3,
    headers: Mapping[str, str] | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for the server's DICOMweb root URL; requests that fail
    for want of the server are tried ``attempts`` times in all (with exponential back-off)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if basic_auth is not None:
        session.auth = basic_auth
    client = DICOMwebClient(url, session=session, headers=dict(headers or {}), timeout=timeout_s)
    client.set_http_retry_params(retry=attempts > 1, max_attempts=max(1, attempts))
    return client


def _ignore_bulk_data(*_args: Any) -> bytes:
    return b""


def choose_study_series(client: Any, study_uid: str) -> SeriesChoice:
    """Find the study's series by QIDO-RS, read the CT series' metadata (other modalities are
    listed as not chosen without fetching theirs), and choose one."""
    try:
        found = client.search_for_series(study_instance_uid=study_uid)
    except Exception as e:
        raise DicomWebError(f"study {study_uid}: cannot search its series ({_reason(e)})") from None
    if not found:
        raise DicomInputError(f"study {study_uid}: the server holds no series of this study")
    headers: list[DicomFile] = []
    for item in found:
        series = Dataset.from_json(item, bulk_data_uri_handler=_ignore_bulk_data)
        uid = str(series.get("SeriesInstanceUID", ""))
        modality = str(series.get("Modality", "") or "")
        if modality and modality != "CT":  # an SR, a SEG, a PET series...: no need for its metadata
            headers.append(DicomFile(Path(uid or "series"), series))
            continue
        try:
            metadata = client.retrieve_series_metadata(study_uid, uid)
        except Exception as e:
            logger.warning("study %s: cannot read the metadata of series %s (%s)", study_uid, uid, _reason(e))
            continue
        for instance in metadata:
            ds = Dataset.from_json(instance, bulk_data_uri_handler=_ignore_bulk_data)
            headers.append(DicomFile(Path(sop_instance_uid(ds) or "instance"), ds))
    return choose_series(group_series(headers), f"study {study_uid}")


def download_series(client: Any, study_uid: str, choice: SeriesChoice, folder: Path) -> int:
    """Store the chosen stack's instances into ``folder`` (WADO-RS); returns how many."""
    wanted = {sop_instance_uid(f.dataset) for f in choice.chosen.files}
    series_uid = choice.chosen.series_uid
    count = 0
    try:
        # as stored ("transfer-syntax=*"): compressed images are decoded here, and a server that
        # cannot transcode (Orthanc without a JPEG 2000 codec) still sends them
        for ds in client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)):
            uid = sop_instance_uid(ds)
            if uid not in wanted:
                continue
            ds.save_as(folder / f"{count:05d}.dcm", enforce_file_format=True)
            count += 1
    except Exception as e:
        raise DicomWebError(
            f"study {study_uid}: cannot retrieve series {series_uid} ({_reason(e)})"
        ) from None
    if count != len(wanted):
        raise DicomInputError(
            f"study {study_uid}: the server returned {count} of the {len(wanted)} instances "
            f"of series {series_uid}"
        )
    return count


def segment_study(
    client: Any,
    study_uid: str,
    segment: Callable[[DicomVolume], np.ndarray],
    model_version: str,
    *,
    max_voxels: int,
    store: bool = True,
    save_to: Path | None = None,
) -> StudyResult:
    """Choose a study's series, read it, segment it with ``segment`` and STOW its SEG back.

    ``save_to``: also write the SEG there (a .dcm path), atomically.
    """
    choice = choose_study_series(client, study_uid)
    logger.info("study %s: chose %s", study_uid, choice.reason)
    folder = Path(tempfile.mkdtemp(prefix="flare-seg-dicomweb-"))
    try:
        download_series(client, study_uid, choice, folder)
        volume = read_dicom_volume(folder, max_voxels, display_name=f"study {study_uid}")
        labels = segment(volume)
        seg = build_seg(labels, volume.source, model_version=model_version)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if save_to is not None:
        write_seg_atomic(seg, save_to)
    if store:
        try:
            client.store_instances([seg], study_instance_uid=study_uid)
        except Exception as e:
            raise DicomWebError(
                f"study {study_uid}: the server did not store the SEG ({_reason(e)})"
            ) from None
        logger.info(
            "study %s: stored SEG %s (series %s)", study_uid, seg.SOPInstanceUID, seg.SeriesInstanceUID
        )
    return StudyResult(
        study_uid,
        choice.chosen.series_uid,
        choice.reason,
        str(seg.SeriesInstanceUID),
        str(seg.SOPInstanceUID),
        labels,
        volume.warnings,
    )


def _reason(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} from {getattr(response, 'url', 'the server')}"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
