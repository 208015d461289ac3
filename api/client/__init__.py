"""A client for the service's REST API: Python functions and a command line on top of them.

    python -m api.client methods
    python -m api.client upload-model lenet5.safetensors --arch lenet5 --num-classes 10
    python -m api.client submit --model 1 --method uniform --dataset digits --param bits=4 \\
        --wait --download out/

The server and the token come from ``--url``/``--token`` or ``QS_URL`` (default
http://127.0.0.1:8000) and ``QS_TOKEN``. Exit codes: 0 done, 1 the job failed or was cancelled,
2 a usage or API error (the server's message is printed).

An accuracy-target search (``submit --search``, or ``target=`` built with :func:`search_target`
and :func:`search_arm`) may cover several methods at once:

    python -m api.client submit --model 1 --method uniform --dataset digits \\
        --search bits=1,2,3,4,5,6,7,8 --within 1 --parallel 3 \\
        --also-search lq_nets:w_bits=1,2,3,4 --also-param lq_nets:epochs=15 --wait

This package (this file, ``args.py``, ``cli.py``, ``targets.py`` and ``__main__.py``) imports only
httpx and the standard library: copy the folder to any machine with httpx and run it as
``python -m <folder>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import httpx

from .targets import search_arm as search_arm
from .targets import search_target as search_target

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STREAM_IDLE_S = 30.0  # a quiet event stream is reopened after this long (the job is polled)
UPLOAD_READ_S = 600.0  # the server validates an upload before it answers
DOWNLOAD_ATTEMPTS = 4  # a download cut short resumes with a Range request this many times
Json = dict[str, Any]


class ApiClientError(Exception):
    """An error answer of the API (``status`` its HTTP status) or, with ``status`` 0, a failure
    on this side: the server unreachable, a timeout, a download whose sha256 does not match."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} (HTTP {status} {code})" if status else message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiClientError:
        """Read the server's ``{"error": {code, message, details}}``, or say what came instead."""
        response.read()
        try:
            error = response.json()["error"]
            return cls(
                response.status_code, str(error["code"]), str(error["message"]), error["details"]
            )
        except (ValueError, KeyError, TypeError):
            request = response.request
            return cls(
                response.status_code,
                "http_error",
                f"{request.method} {request.url} answered HTTP {response.status_code}: "
                f"{response.text[:300]!r}",
            )


class Artifact(TypedDict):
    id: int
    kind: str
    filename: str
    media_type: str
    size_bytes: int
    sha256: str


class Job(TypedDict):
    """The fields of ``GET /jobs/{id}`` a client usually reads (the answer holds more)."""

    id: int
    model_id: int
    method: str
    params: Json
    dataset: str
    dataset_id: int | None
    status: str
    stage: str | None
    progress: float
    error_code: str | None
    error_message: str | None
    result: Json | None
    artifacts: list[Artifact]
    parent_id: int | None
    target: Json | None  # a search's spec and, once ended, its outcome


class JobsPage(TypedDict):
    items: list[Job]
    total: int


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a job: ``fraction`` (0 to 1) of the current ``stage``, with its metrics."""

    stage: str
    fraction: float
    metrics: Json = field(default_factory=dict)
    id: int | None = None  # the stored event's id; None when read from the job while polling


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-Sent Events from a stream of lines: (event, data, id) for each one dispatched."""
    event, data, ident = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data), ident
            event, data, ident = "message", [], None
            continue
        if line.startswith(":"):  # a comment (keep-alive)
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value


def _filename(disposition: str | None, fallback: str) -> str:
    """The file name a Content-Disposition header proposes, reduced to a plain name."""
    match = re.search(r'filename="?([^";]+)"?', disposition or "")
    name = Path(match.group(1)).name if match else ""
    return name if name not in ("", ".", "..") else fallback


class Client:
    """The REST API as methods; every error is an :class:`ApiClientError`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        poll_interval: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith(API_PREFIX) else root + API_PREFIX
        self.timeout, self.poll_interval = timeout, poll_interval
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _network_error(self, exc: httpx.HTTPError, what: str) -> ApiClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ApiClientError(0, "timeout", f"{what}: no answer from {self.base_url} in time")
        if isinstance(exc, httpx.ConnectError):
            return ApiClientError(0, "network_error", f"cannot reach {self.base_url}: {exc}")
        return ApiClientError(
            0, "network_error", f"{what}: the connection to {self.base_url} failed: {exc!r}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._network_error(exc, f"{method} {path}") from exc
        if response.is_error:
            raise ApiClientError.from_response(response)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiClientError(
                response.status_code,
                "bad_response",
                f"{method} {response.request.url} answered HTTP {response.status_code} with "
                f"{response.headers.get('content-type', 'no content type')}, not JSON: "
                f"is {self.base_url} the service's API?",
            ) from None

    def _upload(self, endpoint: str, path: str | os.PathLike[str], form: dict[str, str]) -> Json:
        path = Path(path)
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise ApiClientError(0, "file_error", f"cannot read {path}: {exc.strerror}") from exc
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, UPLOAD_READ_S))
        with handle:  # httpx sends the open file in chunks: never all in memory
            files = {"file": (path.name, handle, "application/octet-stream")}
            return cast(Json, self._call("POST", endpoint, data=form, files=files, timeout=timeout))

    # --- catalogue, uploads -----------------------------------------------------------------

    def methods(self) -> list[Json]:
        return cast(list[Json], self._call("GET", "/methods"))

    def architectures(self) -> list[Json]:
        return cast(list[Json], self._call("GET", "/architectures"))

    def datasets(self) -> list[Json]:
        return cast(list[Json], self._call("GET", "/datasets"))

    def upload_model(
        self,
        path: str | os.PathLike[str],
        arch: str,
        num_classes: int,
        in_channels: int | None = None,
        input_size: tuple[int, int] | None = None,
        name: str | None = None,
    ) -> Json:
        """Upload float weights (safetensors or a state dict); returns the stored model."""
        form = {"arch": arch, "num_classes": str(num_classes)}
        if in_channels is not None:
            form["in_channels"] = str(in_channels)
        if input_size is not None:
            form["input_height"], form["input_width"] = str(input_size[0]), str(input_size[1])
        if name is not None:
            form["name"] = name
        return self._upload("/models", path, form)

    def upload_dataset(
        self, path: str | os.PathLike[str], name: str | None = None, kind: str | None = None
    ) -> Json:
        """Upload an ``.npz`` or an ImageFolder archive (``kind``: npz or imagefolder)."""
        form = {k: v for k, v in (("name", name), ("kind", kind)) if v is not None}
        return self._upload("/datasets", path, form)

    # --- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        model_id: int,
        method: str,
        dataset: str | None = None,
        dataset_id: int | None = None,
        params: Json | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
        target: Json | None = None,
    ) -> Job:
        """Queue a job on a built-in ``dataset`` or an uploaded ``dataset_id``; with ``target``
        (``{"goal", "limit", "param", "values", "parallel"}`` and optionally ``other_methods``:
        see :func:`search_target`) a search whose child jobs try the values, its
        ``target["outcome"]`` naming the winner (and ``winner_method``) once it has ended."""
        body: Json = {"model_id": model_id, "method": method, "params": params or {}}
        optional = {"dataset": dataset, "dataset_id": dataset_id, "target": target}
        optional |= {"batch_size": batch_size, "seed": seed}
        body |= {k: v for k, v in optional.items() if v is not None}
        return cast(Job, self._call("POST", "/jobs", json=body))

    def job(self, job_id: int) -> Job:
        return cast(Job, self._call("GET", f"/jobs/{job_id}"))

    def jobs(
        self,
        status: str | None = None,
        method: str | None = None,
        model_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobsPage:
        """The newest jobs first."""
        query = {"status": status, "method": method, "model_id": model_id}
        params = {k: v for k, v in query.items() if v is not None} | {
            "limit": limit,
            "offset": offset,
        }
        return cast(JobsPage, self._call("GET", "/jobs", params=params))

    def result(self, job_id: int) -> Json:
        return cast(Json, self._call("GET", f"/jobs/{job_id}/result"))

    def cancel(self, job_id: int) -> Job:
        return cast(Job, self._call("POST", f"/jobs/{job_id}/cancel"))

    def events(
        self, job_id: int, after: int = 0, idle_timeout: float = STREAM_IDLE_S
    ) -> Iterator[ProgressEvent]:
        """Follow ``/jobs/{id}/events`` as it arrives; ends with the job. A stream that breaks
        (or stays silent for ``idle_timeout`` seconds) raises :class:`ApiClientError`, status 0."""
        timeout = httpx.Timeout(self.timeout, read=idle_timeout)
        path = f"/jobs/{job_id}/events"
        try:
            with self._http.stream("GET", path, params={"after": after}, timeout=timeout) as r:
                if r.is_error:
                    raise ApiClientError.from_response(r)
                for kind, data, _ in parse_sse(r.iter_lines()):
                    if kind == "end":
                        return
                    if kind == "progress":
                        e = json.loads(data)
                        yield ProgressEvent(e["stage"], e["fraction"], e["metrics"], e["id"])
        except httpx.HTTPError as exc:
            raise self._network_error(exc, f"GET {path}") from exc
        raise ApiClientError(0, "stream_ended", f"GET {path}: the stream ended before the job")

    def wait(
        self,
        job_id: int,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Follow the job's events until it finishes and return it. When the stream drops (a
        proxy, a restart) the job is polled, and the stream reopened from the last event seen."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id, reported = 0, ("", -1.0)

        def report(event: ProgressEvent) -> None:
            nonlocal reported
            reported = (event.stage, event.fraction)
            if on_progress is not None:
                on_progress(event)

        while True:
            remaining = STREAM_IDLE_S if deadline is None else deadline - time.monotonic()
            try:
                for event in self.events(job_id, after=last_id, idle_timeout=max(remaining, 0.1)):
                    last_id = event.id or last_id
                    report(event)
                    if deadline is not None and time.monotonic() > deadline:
                        break
            except ApiClientError as exc:
                if 0 < exc.status < 500:
                    raise
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if job["stage"] is not None and (job["stage"], job["progress"]) != reported:
                report(ProgressEvent(job["stage"], job["progress"]))
            if deadline is not None and time.monotonic() >= deadline:
                raise ApiClientError(
                    0, "timeout", f"job {job_id} is still {job['status']} after {timeout} s"
                )
            time.sleep(self.poll_interval)

    # --- downloads --------------------------------------------------------------------------

    def download(
        self,
        artifact_id: int,
        dest: str | os.PathLike[str],
        expected_sha256: str | None = None,
    ) -> Path:
        """Save an artifact as ``dest`` (or under the server's file name in the folder
        ``dest``): streamed to a temporary file beside it, resumed with a Range request if the
        connection breaks, checked against its sha256, then renamed. Returns the path."""
        into = str(dest).endswith(("/", os.sep)) or Path(dest).is_dir()  # a folder, or a file
        dest = Path(dest)
        if into:
            dest.mkdir(parents=True, exist_ok=True)
        folder = dest if into else dest.parent
        part = folder / f".artifact-{artifact_id}-{secrets.token_hex(4)}.part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise ApiClientError(0, "file_error", f"cannot write in {folder}: {exc}") from exc
        try:
            with open(fd, "wb") as out:
                headers = self._fetch_to(artifact_id, out)
                out.flush()
                os.fsync(out.fileno())
            digest = headers.pop("sha256")
            want = expected_sha256 or headers.get("x-content-sha256")
            want = want or headers.get("etag", "").strip('"') or "(the server sent none)"
            if digest != want:
                raise ApiClientError(
                    0,
                    "checksum_mismatch",
                    f"artifact {artifact_id} arrived with sha256 {digest}, expected {want}",
                    {"expected": want, "received": digest},
                )
            fallback = f"artifact-{artifact_id}"
            name = _filename(headers.get("content-disposition"), fallback)
            target = folder / name if into else dest
            os.replace(part, target)
            return target
        finally:
            part.unlink(missing_ok=True)

    def _fetch_to(self, artifact_id: int, out: Any) -> dict[str, str]:
        """Stream the artifact into ``out``; returns the first answer's headers and ``sha256``."""
        path, digest, received = f"/artifacts/{artifact_id}", hashlib.sha256(), 0
        first: dict[str, str] = {}
        for attempt in range(DOWNLOAD_ATTEMPTS):
            headers = {"Range": f"bytes={received}-"} if received else {}
            try:
                with self._http.stream("GET", path, headers=headers) as r:
                    if r.is_error:
                        raise ApiClientError.from_response(r)
                    if r.status_code != 206 or r.headers.get("etag") != first.get("etag"):
                        out.seek(0)  # the whole file comes (again): from byte 0
                        out.truncate()
                        digest, received = hashlib.sha256(), 0
                        first = {k.lower(): v for k, v in r.headers.items()}
                        if r.status_code == 206:  # the tail of a changed file: start over
                            continue
                    for chunk in r.iter_bytes():  # as they arrive: a cut keeps them all
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                return first | {"sha256": digest.hexdigest()}
            except httpx.HTTPError as exc:
                if attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise self._network_error(exc, f"GET {path}") from exc
                time.sleep(min(self.poll_interval * 2**attempt, 10))
        raise ApiClientError(0, "download_failed", f"GET {path}: the file kept changing")

    def download_job(
        self, job: Job | int, dest_dir: str | os.PathLike[str], kinds: Iterable[str] = ()
    ) -> list[Path]:
        """Download a job's artifacts (only those of ``kinds``, if given) into ``dest_dir``."""
        job = self.job(job) if isinstance(job, int) else job
        wanted = set(kinds)
        chosen = [a for a in job["artifacts"] if not wanted or a["kind"] in wanted]
        if not chosen:
            have = ", ".join(sorted({a["kind"] for a in job["artifacts"]})) or "none"
            raise ApiClientError(
                0,
                "no_artifact",
                f"job {job['id']} ({job['status']}) has no artifact of kind "
                f"{', '.join(sorted(wanted)) or 'any'}; it has: {have}",
            )
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        return [self.download(a["id"], dest_dir, a["sha256"]) for a in chosen]
