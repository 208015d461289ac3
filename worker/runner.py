"""The job runner: claim a job, run quantcore on it, store its result and artifacts, finish it.

Every state change is a conditional update (``api.jobs``): a duplicate or redelivered message for
a finished job claims nothing and returns; a redelivered message for a job whose worker died
takes it over once its heartbeat is stale, and the method resumes from the job's checkpoints.

Faults: while the database is unreachable the job goes on (progress waits in memory, heartbeats
are skipped) and its end state is written once the database answers again (retried for up to
:data:`DB_RETRY_S`). A blob store without space fails the job with ``storage_full`` and leaves
no artifact behind, neither a row nor a file.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import jobs as transitions
from api.db import session_scope
from api.models import Artifact, Dataset, Job, JobStatus, Model, Result
from api.settings import Settings
from api.storage import BlobStore, StorageFull, StoredBlob
from quantcore import (
    Cancelled,
    ModelSpec,
    QuantcoreError,
    RunContext,
)
from worker.devices import Peak
from worker.pipeline import JobSpec, quantize_job
from worker.progress import DB_DOWN, ProgressWriter

log = get_task_logger(__name__)
T = TypeVar("T")

# How long a finished job waits for an unreachable database to record its end state; past it
# the task gives up and its message is retried (the job is then taken over and run again).
DB_RETRY_S = 600.0
DB_RETRY_MAX_DELAY_S = 5.0


class JobBusy(Exception):
    """The job is running under another worker whose heartbeat is fresh: try again later."""


def run_job(
    job_id: int,
    *,
    settings: Settings,
    factory: sessionmaker[Session],
    storage: BlobStore,
    device: torch.device,
) -> JobStatus | None:
    """Run job ``job_id`` to an end state and return it.

    Returns None when there is nothing to run (the job is finished, cancelled or gone); raises
    :class:`JobBusy` when another worker holds it, so the message is retried after the lease:
    if that worker died, the retry takes the job over and resumes from its checkpoints.
    """
    with session_scope(factory) as s:
        if not transitions.claim(
            s, job_id, lease_s=settings.job_lease_s, host=socket.gethostname()
        ):
            if transitions.reap_cancelled(s, job_id, lease_s=settings.job_lease_s):
                log.info("job %s: cancelled (its worker died after the cancel request)", job_id)
                return JobStatus.CANCELLED
            job = s.get(Job, job_id)
            if job is not None and job.status == JobStatus.RUNNING:
                raise JobBusy(f"job {job_id} is running on {job.worker_host}")
            log.info("job %s: nothing to run (%s)", job_id, "gone" if job is None else job.status)
            return None
        job = s.get(Job, job_id)
        assert job is not None
        model = s.get(Model, job.model_id)
        assert model is not None
        spec = JobSpec(
            job.id,
            job.method,
            dict(job.params),
            job.dataset,
            job.batch_size,
            job.seed,
            storage.path(model.blob_key),
            ModelSpec(
                model.arch,
                model.num_classes,
                model.in_channels,
                (model.input_height, model.input_width),
            ),
            job.dataset_id,
            *_dataset_source(s, storage, job.dataset_id),
            model.sha256,
            job.deterministic,
        )
        transitions.heartbeat(s, job_id, device=str(device))
    log.info("job %s: claimed, running %s on %s", job_id, spec.method, device)
    writer = ProgressWriter(factory, job_id)
    checkpoints = settings.work_dir / f"job-{job_id}"
    ctx = RunContext(
        device=device,
        seed=spec.seed,
        on_progress=writer,
        should_cancel=writer.should_cancel,
        checkpoint_dir=checkpoints,
    )
    started = time.monotonic()
    peak = Peak()
    outputs = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_scratch(settings)))
    beating = _Heartbeat(factory, job_id, every=settings.job_lease_s / 4)
    beating.start()
    try:
        result, files = run_with_oom_retry(spec, ctx, outputs, peak, factory=factory)
        return _succeed(
            factory,
            storage,
            writer,
            job_id,
            result,
            files,
            wall=time.monotonic() - started,
            peak=peak.bytes,
        )
    except Cancelled:
        wall = time.monotonic() - started

        def cancelled() -> None:
            with session_scope(factory) as s:
                transitions.finish(
                    s, job_id, JobStatus.CANCELLED, stage="cancelled", wall_time_s=wall
                )

        _with_db(cancelled, job_id, "the cancellation")
        return JobStatus.CANCELLED
    except StorageFull:
        log.error("job %s: the blob store is full; the job fails", job_id)
        return _fail(
            factory,
            job_id,
            "storage_full",
            "the job ran to the end but its artifacts could not be stored: the server's "
            "blob storage is out of disk space. Nothing partial was kept; submit the job "
            "again once space has been freed (ask the operator).",
            traceback.format_exc(),
            started,
        )
    except SoftTimeLimitExceeded:
        limit = settings.job_time_limit_s
        return _fail(
            factory,
            job_id,
            "time_limit",
            f"the job ran past its time limit of {limit} s (QS_JOB_TIME_LIMIT_S)",
            traceback.format_exc(),
            started,
        )
    except QuantcoreError as exc:
        log.info("job %s failed: %s", job_id, exc.message)
        return _fail(factory, job_id, exc.code, exc.message, traceback.format_exc(), started)
    except DB_DOWN:  # still unreachable after DB_RETRY_S: the task retries the message
        raise
    except Exception as exc:
        log.exception("job %s crashed", job_id)
        return _fail(
            factory,
            job_id,
            "internal_error",
            f"{type(exc).__name__}: {exc}",
            traceback.format_exc(),
            started,
        )
    finally:
        beating.stop()
        shutil.rmtree(outputs, ignore_errors=True)
        shutil.rmtree(checkpoints, ignore_errors=True)  # only a killed process leaves them


def halved(spec: JobSpec) -> JobSpec | None:
    """The job with half its batch sizes (the evaluation batch and the method's training
    ``batch_size`` param, where it has one), or None when both are already 1."""
    train = spec.params.get("batch_size")
    if spec.batch_size <= 1 and (not isinstance(train, int) or train <= 1):
        return None
    params = dict(spec.params)
    if isinstance(train, int):
        params["batch_size"] = max(train // 2, 1)
    return replace(spec, batch_size=max(spec.batch_size // 2, 1), params=params)


def run_with_oom_retry(
    spec: JobSpec,
    ctx: RunContext,
    out: Path,
    peak: Peak,
    *,
    factory: sessionmaker[Session],
    run: Callable[[JobSpec, RunContext, Path, Peak], tuple[dict[str, Any], dict[str, Path]]]
    | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the job; after a device out-of-memory error, run it once more with half the batch,
    resuming from the checkpoints the first try left (the job row then records the batch sizes
    that ran). A second one fails the job with the numbers (:class:`OutOfMemory`)."""
    run = quantize_job if run is None else run
    try:
        return run(spec, ctx, out, peak)
    except torch.OutOfMemoryError as first:
        smaller = halved(spec)
        device_total = (
            torch.cuda.get_device_properties(ctx.device).total_memory
            if ctx.device.type == "cuda"
            else None
        )
        numbers = f"(device {ctx.device}, {_mib(device_total)} in all; {first})"
        if smaller is None:
            raise OutOfMemory(
                f"the job ran out of device memory at batch size 1 {numbers}"
            ) from None
        log.warning(
            "job %s: out of memory at batch %s; retrying at %s",
            spec.id,
            spec.batch_size,
            smaller.batch_size,
        )
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()

        def record() -> None:
            with session_scope(factory) as s:
                job = s.get(Job, spec.id)
                if job is not None:
                    job.batch_size, job.params = smaller.batch_size, smaller.params

        _with_db(record, spec.id, "the halved batch size")
        ctx.report("out of memory: retrying with half the batch", 0.0)
        try:
            return run(smaller, ctx, out, peak)
        except torch.OutOfMemoryError as second:
            raise OutOfMemory(
                f"the job ran out of device memory at batch size {spec.batch_size} and again "
                f"at {smaller.batch_size} {numbers}; second error: {second}. Submit it with a "
                "smaller batch size or to a worker with more memory"
            ) from None


class OutOfMemory(QuantcoreError):
    code = "out_of_memory"


def _mib(size: int | None) -> str:
    return "unknown memory" if size is None else f"{size / 2**20:.0f} MiB"


class _Heartbeat(threading.Thread):
    """Keeps the job's lease fresh while it runs, also through long steps without progress."""

    def __init__(self, factory: sessionmaker[Session], job_id: int, every: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.factory, self.job_id, self.every = factory, job_id, every
        self._stopping = threading.Event()  # not _stop: Thread has one

    def run(self) -> None:
        failing = False
        while not self._stopping.wait(self.every):
            try:
                with session_scope(self.factory) as s:
                    transitions.heartbeat(s, self.job_id)
            except Exception:  # a lost connection must not kill the job; the next beat retries
                if not failing:  # once per outage, not every beat
                    log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)
                failing = True
            else:
                failing = False

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


def _scratch(settings: Settings) -> Path:
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    return settings.work_dir


def _dataset_source(
    s: Session, storage: BlobStore, dataset_id: int | None
) -> tuple[Path | None, str | None, str | None]:
    """An upload's blob (a file for .npz, a folder for an image archive), loader and sha256."""
    if dataset_id is None:
        return None, None, None
    row = s.get(Dataset, dataset_id)
    if row is None:
        return None, None, None
    return storage.path(row.blob_key), row.kind, row.sha256


_MEDIA = {
    "qpack": ("model.qpack", "application/zip"),
    "safetensors": ("dequantized.safetensors", "application/octet-stream"),
    "onnx": ("model.onnx", "application/octet-stream"),
    "report": ("report.json", "application/json"),
}


def _succeed(
    factory: sessionmaker[Session],
    storage: BlobStore,
    writer: ProgressWriter,
    job_id: int,
    result: dict[str, Any],
    files: dict[str, Path],
    *,
    wall: float,
    peak: int | None,
) -> JobStatus | None:
    """Store the artifacts (all or none: a full disk raises :class:`StorageFull` with nothing
    kept), then record them, the result, the end state and any progress events the database
    missed in one transaction."""
    blobs: dict[str, StoredBlob] = {}
    try:
        for kind, path in files.items():
            blobs[kind] = storage.save_file(path, prefix="artifacts", suffix=path.suffix)
    except BaseException:
        for blob in blobs.values():
            storage.delete(blob.key)
        raise
    status = _with_db(
        lambda: _record_success(
            factory, storage, writer, job_id, result, blobs, wall=wall, peak=peak
        ),
        job_id,
        "the result",
    )
    writer.written()
    return status


def _record_success(
    factory: sessionmaker[Session],
    storage: BlobStore,
    writer: ProgressWriter,
    job_id: int,
    result: dict[str, Any],
    blobs: dict[str, StoredBlob],
    *,
    wall: float,
    peak: int | None,
) -> JobStatus | None:
    with session_scope(factory) as s:
        if not transitions.finish(
            s,
            job_id,
            JobStatus.SUCCEEDED,
            stage="done",
            progress=1.0,
            wall_time_s=wall,
            peak_memory_bytes=peak,
        ):
            s.rollback()
            # An earlier try may have committed before its connection dropped: keep what the
            # job's rows point at, delete the rest.
            kept = set(s.scalars(select(Artifact.blob_key).where(Artifact.job_id == job_id)))
            for blob in blobs.values():
                if blob.key not in kept:
                    storage.delete(blob.key)
            job = s.get(Job, job_id)
            return None if job is None else JobStatus(job.status)
        writer.add_pending(s)
        s.add(Result(job_id=job_id, **result))
        for kind, blob in blobs.items():
            filename, media = _MEDIA[kind]
            s.add(
                Artifact(
                    job_id=job_id,
                    kind=kind,
                    filename=f"job-{job_id}-{filename}",
                    media_type=media,
                    blob_key=blob.key,
                    size_bytes=blob.size,
                    sha256=blob.sha256,
                )
            )
    return JobStatus.SUCCEEDED


def _fail(
    factory: sessionmaker[Session], job_id: int, code: str, message: str, tb: str, started: float
) -> JobStatus:
    wall = time.monotonic() - started

    def failed() -> None:
        with session_scope(factory) as s:
            transitions.finish(
                s,
                job_id,
                JobStatus.FAILED,
                stage="failed",
                error_code=code,
                error_message=message[:4000],
                error_traceback=tb[-20000:],
                wall_time_s=wall,
            )

    _with_db(failed, job_id, "the failure")
    return JobStatus.FAILED


def _with_db(write: Callable[[], T], job_id: int, what: str) -> T:
    """``write()``, tried again while the database is unreachable, for up to DB_RETRY_S."""
    deadline, delay = time.monotonic() + DB_RETRY_S, 0.5
    while True:
        try:
            return write()
        except DB_DOWN:
            if time.monotonic() + delay > deadline:
                log.error("job %s: database unreachable for %.0f s; giving up", job_id, DB_RETRY_S)
                raise
            log.warning(
                "job %s: database unreachable while recording %s; trying again in %.1f s",
                job_id,
                what,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX_DELAY_S)
