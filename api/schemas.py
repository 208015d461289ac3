"""Request and response bodies (separate from the ORM models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp the service stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
# Row ids are PostgreSQL INTEGER keys: a larger id in a query overflows there (a 500, not a 404).
MAX_ID = 2**31 - 1
# Names and labels: no control characters. PostgreSQL refuses NUL in text (a 500 otherwise), and
# a newline or ESC in a name shown in a log line or a terminal is never what the user meant.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorBody(BaseModel):
    error: ErrorDetail


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ArchitecturePublic(_Out):
    name: str
    title: str
    default_in_channels: int
    default_input_size: tuple[int, int]
    description: str
    source: str


class MethodPublic(_Out):
    name: str
    title: str
    paper: str
    summary: str
    params_schema: dict[str, Any]
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Named parameter sets beside the defaults (each sets only what it names).",
    )


class DatasetPublic(_Out):
    """A built-in dataset (``id`` null, ``kind`` "builtin") or an uploaded one."""

    id: int | None = None
    name: str
    kind: str
    title: str = ""
    available: bool = True
    description: str = ""
    num_classes: int | None = None
    in_channels: int | None = None
    input_height: int | None = None
    input_width: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: UtcDatetime | None = None


class ModelPublic(_Out):
    id: int
    name: str
    arch: str
    num_classes: int
    in_channels: int
    input_height: int
    input_width: int
    num_params: int
    size_bytes: int
    sha256: str
    created_at: UtcDatetime


class ModelsPublic(BaseModel):
    items: list[ModelPublic]
    total: int


class TargetArm(BaseModel):
    """Another method searched beside the job's own: its fixed params and its own size knob.

    Its children run on the job's model, dataset, batch size and seed; its values are searched
    on their own (the monotone assumption holds along one knob, not across methods), and the
    search's answer is the best of every method's answer."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        min_length=1, max_length=64, pattern=NO_CONTROL, description="A method name from /methods."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="The method's fixed params (the knob aside)."
    )
    param: str = Field(
        min_length=1,
        max_length=64,
        pattern=NO_CONTROL,
        description="The method's param searched (its size knob, e.g. bits, w_bits).",
    )
    values: list[Any] = Field(
        min_length=1,
        max_length=32,
        description="The param's values, ordered from the smallest model to the largest.",
    )


class TargetSpec(BaseModel):
    """An accuracy-target search over one of the method's params (its size knob), and
    optionally over other methods' knobs too (``other_methods``)."""

    model_config = ConfigDict(extra="forbid")

    goal: Literal["smallest_within", "most_accurate_under"] = Field(
        description="smallest_within: the smallest model within `limit` top-1 points of float; "
        "most_accurate_under: the most accurate model of at most `limit` bytes."
    )
    limit: float = Field(gt=0, le=1e15, description="Points of top-1, or bytes.")
    param: str = Field(
        min_length=1,
        max_length=64,
        pattern=NO_CONTROL,
        description="The job's own method's param searched (its size knob, e.g. bits).",
    )
    values: list[Any] = Field(
        min_length=1,
        max_length=32,
        description="The param's values, ordered from the smallest model to the largest.",
    )
    parallel: int = Field(
        2,
        ge=1,
        le=16,
        description="Child jobs run at once, over all methods (shared fairly among the methods "
        "whose search has not ended).",
    )
    other_methods: list[TargetArm] = Field(
        default_factory=list,
        max_length=3,
        description="More methods to search, each over its own knob; the answer is the best "
        "model over all of them (smallest_within: the smallest, ties to the more accurate; "
        "most_accurate_under: the most accurate, ties to the smaller). The outcome names "
        "`winner_method` and each method's own answer in `arms`.",
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: int = Field(ge=1, le=MAX_ID, description="An uploaded model's id.")
    method: str = Field(
        min_length=1, max_length=64, pattern=NO_CONTROL, description="A method name from /methods."
    )
    dataset: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=NO_CONTROL,
        description="A built-in dataset name from /datasets.",
    )
    dataset_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="An uploaded dataset's id (instead of `dataset`)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="The method's params (see its JSON schema)."
    )
    batch_size: int = Field(128, ge=1, le=4096, description="Evaluation and training batch size.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of every random choice.")
    deterministic: bool = Field(
        False,
        description="Run with torch.use_deterministic_algorithms (and cuDNN's deterministic "
        "kernels): on CUDA a re-run then reproduces the result exactly, at some speed cost; "
        "a job whose method needs an operation without a deterministic kernel fails and says "
        "so. CPU runs are deterministic either way.",
    )

    target: TargetSpec | None = Field(
        None,
        description="Search instead of one run: child jobs try the values of one param, and the "
        "job reports the winner and the Pareto set.",
    )

    @model_validator(mode="after")
    def _one_dataset(self) -> JobCreate:
        if (self.dataset is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of `dataset` (a built-in) and `dataset_id`")
        return self


class ArtifactPublic(_Out):
    id: int
    kind: str
    filename: str
    media_type: str
    size_bytes: int
    sha256: str


class ResultPublic(_Out):
    float_top1: float
    float_top5: float
    top1: float
    top5: float
    artifact_top1: float
    float_bytes: int
    quantized_bytes: int
    file_bytes: int
    compression_ratio: float
    average_bits: float
    layers: list[dict[str, Any]]
    provenance: dict[str, Any] = Field(
        description="What produced the result: method, params, seed, code version, torch/CUDA "
        "versions, device, the float model's and the dataset's sha256."
    )
    inference: dict[str, Any] = Field(
        description="Median batch latency (ms) and throughput of the float model and of the "
        "artifact as load_artifact runs it (dequantized weights), same device and batch."
    )
    onnx_status: str = Field(description="'written', or why no ONNX file was exported.")


class JobPublic(_Out):
    id: int
    model_id: int
    method: str
    params: dict[str, Any]
    dataset: str
    dataset_id: int | None
    batch_size: int
    seed: int
    deterministic: bool = False
    status: str
    stage: str | None
    progress: float
    cancel_requested: bool
    attempts: int
    error_code: str | None
    error_message: str | None
    device: str | None
    worker_host: str | None
    wall_time_s: float | None
    peak_memory_bytes: int | None
    memory_estimate_bytes: int | None = Field(
        None,
        description="Peak memory the job was estimated to need on its device before it was "
        "queued (compare with peak_memory_bytes, measured).",
    )
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    result: ResultPublic | None = None
    artifacts: list[ArtifactPublic] = []
    parent_id: int | None = None
    target: dict[str, Any] | None = Field(
        None, description="A search's spec and, once it has ended, its `outcome`."
    )


class JobsPublic(BaseModel):
    items: list[JobPublic]
    total: int


class JobEventPublic(_Out):
    id: int
    stage: str
    fraction: float
    metrics: dict[str, Any]
    created_at: UtcDatetime


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=100, pattern=NO_CONTROL)
    password: str = Field(min_length=1, max_length=1024)


class UserPublic(_Out):
    id: int
    name: str
    is_admin: bool
    created_at: UtcDatetime


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=100, pattern=NO_CONTROL, description="Letters, digits, . _ @ -"
    )
    password: str = Field(min_length=8, max_length=1024)
    is_admin: bool = False


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=NO_CONTROL,
        description="What the token is for, e.g. 'ci'.",
    )


class TokenPublic(_Out):
    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: UtcDatetime
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The token itself: shown this once, never stored.")
