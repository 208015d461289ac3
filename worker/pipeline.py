"""The quantcore part of a job: load the model and data, evaluate the float model, quantize,
evaluate, write the artifacts and check them, measure inference, and build the result.

Nothing here touches the database or the queue (``worker.runner`` does): given a job's spec and
a run context, it returns the result's fields and the files to store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from quantcore import (
    DataBundle,
    InvalidArtifact,
    InvalidDataset,
    InvalidParams,
    ModelSpec,
    RunContext,
    evaluate,
    get_method,
    load_artifact,
    load_dataset,
    load_model,
    parse_params,
    provenance,
    save_artifact,
    size_report,
)
from quantcore.artifact import dequantized_state_dict, stored_bytes
from quantcore.export import export_onnx
from quantcore.inference import NOTE, compare_speed
from quantcore.memory import module_bytes
from worker.devices import Peak, deterministic_algorithms, measure_peak

log = logging.getLogger(__name__)

# The artifact is reloaded and evaluated on every job; its accuracy may differ from the
# in-memory model's only by float noise in the logits (a tie flipping an argmax).
ROUND_TRIP_TOLERANCE_PTS = 0.05

# The float model and the artifact are timed side by side on the job's device and batch size.
INFERENCE_ROUNDS = 10


@dataclass(frozen=True)
class JobSpec:
    id: int
    method: str
    params: dict[str, Any]
    dataset: str
    batch_size: int
    seed: int
    model_path: Path
    spec: ModelSpec
    dataset_id: int | None  # an upload (.npz or image folder), else ``dataset`` is a built-in
    dataset_path: Path | None  # None for an upload deleted meanwhile
    dataset_kind: str | None  # the upload's loader: "npz" or "imagefolder"
    dataset_sha256: str | None  # the upload's sha256 (its identity in the provenance)
    model_sha256: str
    deterministic: bool = False  # torch.use_deterministic_algorithms for the run


def _dataset_identity(spec: JobSpec) -> dict[str, Any]:
    """An upload is its sha256 (recorded at upload); a built-in is hashed from its files."""
    if spec.dataset_id is not None:
        return {
            "name": spec.dataset_kind,
            "upload_id": spec.dataset_id,
            "sha256": spec.dataset_sha256,
        }
    return provenance.dataset_identity(spec.dataset)


def _load_data(spec: JobSpec) -> DataBundle:
    """The job's dataset at the model's input size (square models resize it when it differs)."""
    if spec.dataset_id is not None and (spec.dataset_path is None or spec.dataset_kind is None):
        raise InvalidDataset(f"the job's dataset {spec.dataset_id} was deleted")
    name, root = (
        (spec.dataset_kind, spec.dataset_path) if spec.dataset_path else (spec.dataset, None)
    )
    assert name is not None
    height, width = spec.spec.input_size
    if name == "imagefolder":  # resized (and center-cropped) to a square on reading
        if height != width:
            raise InvalidDataset(
                f"an image folder gives square images; the model takes {height}x{width}"
            )
        return load_dataset(name, root=root, image_size=height)
    data = load_dataset(name, root=root)
    if data.input_size != (height, width) and height == width:
        data = load_dataset(name, root=root, image_size=height)  # e.g. 8x8 digits for LeNet5's 28
    return data


def quantize_job(
    spec: JobSpec, ctx: RunContext, out: Path, peak: Peak | None = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the job: evaluate, quantize, write and check the artifact, measure inference.

    ``peak`` receives the tensor peak of the evaluate-quantize-evaluate span on the device."""
    peak = Peak() if peak is None else peak
    ctx.report("load", 0.0)
    data = _load_data(spec)
    if data.num_classes > spec.spec.num_classes or data.in_channels != spec.spec.in_channels:
        raise InvalidDataset(
            f"dataset {spec.dataset} has {data.num_classes} classes and {data.in_channels} "
            f"input channels, the model {spec.spec.num_classes} and {spec.spec.in_channels}"
        )
    model = load_model(
        spec.model_path,
        spec.spec.arch,
        num_classes=spec.spec.num_classes,
        in_channels=spec.spec.in_channels,
    ).to(ctx.device)
    method = get_method(spec.method)
    params = parse_params(spec.method, spec.params)
    _, val = data.loaders(spec.batch_size, seed=spec.seed)
    with (
        deterministic_algorithms(spec.deterministic),
        measure_peak(ctx.device, module_bytes(model), into=peak),  # what admission estimated
    ):
        before = evaluate(model, val, ctx, stage="evaluate float")
        quantized = method.quantize(model, data, params, ctx)
        after = evaluate(quantized, val, ctx, stage="evaluate quantized")
    sizes = size_report(quantized)
    files = {
        "qpack": out / "model.qpack",
        "safetensors": out / "dequantized.safetensors",
        "onnx": out / "model.onnx",
        "report": out / "report.json",
    }
    run = provenance.manifest(
        method=spec.method,
        params=params.model_dump(mode="json"),
        seed=spec.seed,
        device=ctx.device,
        model_sha256=spec.model_sha256,
        dataset=_dataset_identity(spec),
        extra=[("batch_size", spec.batch_size), ("deterministic", spec.deterministic)],
    )
    save_artifact(
        quantized,
        files["qpack"],
        spec=spec.spec,
        method=spec.method,
        params=params.model_dump(mode="json"),
        metrics={"float_top1": before.top1, "top1": after.top1},
        provenance=run,
    )
    artifact_model = load_artifact(files["qpack"], ctx.device)
    reloaded = evaluate(artifact_model, val, ctx, stage="evaluate artifact")
    if abs(reloaded.top1 - after.top1) > ROUND_TRIP_TOLERANCE_PTS:
        raise InvalidArtifact(
            f"the written artifact scores {reloaded.top1:.2f}% top-1 but the quantized model "
            f"{after.top1:.2f}%: the artifact does not reproduce the model"
        )
    save_file(dequantized_state_dict(quantized), str(files["safetensors"]))
    onnx_status = "written"
    try:
        export_onnx(
            quantized, files["onnx"], input_shape=(spec.spec.in_channels, *spec.spec.input_size)
        )
    except InvalidParams as exc:  # e.g. an activation quantizer the exporter cannot trace
        onnx_status = f"not exported: {exc.message}"
        del files["onnx"]
        log.warning("job %s: %s", spec.id, onnx_status)
    written = stored_bytes(files["qpack"])  # per layer, beside the theoretical bytes
    ctx.report("measure inference", 0.0)
    float_model = load_model(
        spec.model_path,
        spec.spec.arch,
        num_classes=spec.spec.num_classes,
        in_channels=spec.spec.in_channels,
    )
    speeds = compare_speed(
        {"float": float_model, "artifact": artifact_model},
        (spec.spec.in_channels, *spec.spec.input_size),
        batch_size=spec.batch_size,
        device=ctx.device,
        rounds=INFERENCE_ROUNDS,
    )
    ctx.report("measure inference", 1.0)
    result = {
        "float_top1": before.top1,
        "float_top5": before.top5,
        "top1": after.top1,
        "top5": after.top5,
        "artifact_top1": reloaded.top1,
        "float_bytes": sizes.float_bytes,
        "quantized_bytes": sizes.quantized_bytes,
        "file_bytes": files["qpack"].stat().st_size,
        "compression_ratio": sizes.compression_ratio,
        "average_bits": sizes.average_bits,
        "layers": [{**r.to_json(), "file_bytes": written.get(r.name, 0)} for r in sizes.layers],
        "provenance": run,
        "inference": {
            **{name: speed.to_json() for name, speed in speeds.items()},
            "device": str(ctx.device),
            "note": NOTE,
        },
        "onnx_status": onnx_status,
    }
    report = {
        "job_id": spec.id,
        "method": spec.method,
        "params": params.model_dump(mode="json"),
        "model": spec.spec.to_json(),
        "dataset": spec.dataset,
        **result,
    }
    files["report"].write_text(json.dumps(report, indent=1))
    ctx.report("done", 1.0)
    return result, files
