"""The reproducibility manifest: what code, stack, device and inputs produced a result."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from quantcore import ModelSpec, build, get_method, load_dataset, read_manifest, save_artifact
from quantcore.context import RunContext
from quantcore.provenance import (
    code_version,
    dataset_identity,
    environment,
    file_sha256,
    manifest,
    tree_sha256,
)


def test_file_and_tree_hashes_follow_every_byte_and_name(tmp_path: Path) -> None:
    data = np.random.default_rng().bytes(3_000_000)  # more than one read chunk
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(data)
    (tmp_path / "y.bin").write_bytes(b"y")
    assert file_sha256(tmp_path / "a" / "x.bin") == hashlib.sha256(data).hexdigest()
    before = tree_sha256(tmp_path)
    assert tree_sha256(tmp_path) == before
    (tmp_path / "y.bin").rename(tmp_path / "z.bin")
    renamed = tree_sha256(tmp_path)
    assert renamed != before
    (tmp_path / "z.bin").write_bytes(b"Y")
    assert tree_sha256(tmp_path) not in (before, renamed)


def test_the_code_version_names_this_checkout() -> None:
    info = code_version()
    assert info["version"] == "0.1.0"
    revision = info["git_revision"]
    assert revision is None or len(revision) == 40


def test_environment_describes_the_stack_and_device() -> None:
    env = environment("cpu")
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert env["device_name"]
    assert env["cudnn"] is None  # not used on the CPU


def test_dataset_identity_hashes_uploads_and_names_packaged_builtins(tmp_path: Path) -> None:
    upload = tmp_path / "data.npz"
    upload.write_bytes(b"not really an npz, but bytes to hash")
    identity = dataset_identity("npz", upload)
    assert identity["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
    assert dataset_identity("digits")["source"].startswith("scikit-learn ")


def test_the_artifact_carries_the_manifest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("lenet5", num_classes=10, in_channels=1)
    data = load_dataset("digits", image_size=28)
    method = get_method("uniform")
    params = method.Params(bits=4)
    quantized = method.quantize(model, data, params, RunContext())
    run = manifest(
        method="uniform",
        params=params.model_dump(mode="json"),
        seed=7,
        device="cpu",
        model_sha256="ab" * 32,
        dataset=dataset_identity("digits"),
    )
    path = tmp_path / "m.qpack"
    save_artifact(
        quantized,
        path,
        spec=ModelSpec("lenet5", 10, 1, (28, 28)),
        method="uniform",
        params=params.model_dump(mode="json"),
        provenance=run,
    )
    stored = read_manifest(path)["provenance"]
    assert stored == run
    assert stored["seed"] == 7
    assert stored["params"]["bits"] == 4
    assert stored["environment"]["torch"] == torch.__version__
