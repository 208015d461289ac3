"""ImageFolder archives uploaded as datasets, against real PostgreSQL, Redis and a worker process.

An archive of train/<class>/*.png and val/<class>/*.png becomes a dataset a job can run on;
a hostile archive is refused with a 4xx and leaves the dataset list and the blob store as they were.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from api.deps import get_settings
from quantcore import build
from tests.integration.conftest import Service

pytestmark = pytest.mark.slow

CLASSES = ("circle", "cross", "square")


def _png(label: int, seed: int) -> bytes:
    """An 8x8 RGB image: one bright channel per class, plus noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 64, (8, 8, 3), dtype=np.uint8)
    pixels[..., label] += 160
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _tree(per_train: int = 6, per_val: int = 3) -> dict[str, bytes]:
    members, seed = {}, 0
    for split, count in (("train", per_train), ("val", per_val)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                members[f"shapes/{split}/{name}/{i}.png"] = _png(label, seed)
                seed += 1
    return members


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _rgb_lenet(path: Path) -> Path:
    model = build("lenet5", num_classes=len(CLASSES), in_channels=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _post(service: Service, path: Path, filename: str, **form: str):
    with open(path, "rb") as f:
        return service.client.post("/api/v1/datasets", data=form, files={"file": (filename, f)})


def _blob_files(service: Service) -> set[str]:
    root = service.settings.resolved_blob_dir
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_a_job_on_an_uploaded_image_folder_archive(production: Service, tmp_path: Path) -> None:
    with open(_rgb_lenet(tmp_path / "lenet5-rgb.safetensors"), "rb") as f:
        model = production.client.post(
            "/api/v1/models",
            data={"arch": "lenet5", "num_classes": "3", "in_channels": "3"},
            files={"file": ("lenet5-rgb.safetensors", f)},
        )
    assert model.status_code == 201, model.text

    created = _post(production, _tar_gz(tmp_path / "shapes.tgz", _tree()), "shapes.tgz")
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert dataset["kind"] == "imagefolder"
    assert (dataset["num_classes"], dataset["in_channels"]) == (3, 3)
    assert (dataset["input_height"], dataset["input_width"]) == (8, 8)
    assert (dataset["num_train"], dataset["num_val"]) == (18, 9)
    assert dataset["name"] == "shapes.tgz"
    blobs = production.settings.resolved_blob_dir
    folders = [p for p in (blobs / "datasets").iterdir() if (p / "train" / "circle").is_dir()]
    assert len(folders) == 1
    assert len(list((folders[0] / "val" / "square").iterdir())) == 3
    assert not any((blobs / "uploads").iterdir())  # the archive itself is not kept

    # the kind field wins over the name, and a zip of images is not mistaken for an .npz
    as_zip = _post(
        production, _zip(tmp_path / "a.zip", _tree(2, 1)), "looks.npz", kind="imagefolder"
    )
    assert as_zip.status_code == 201, as_zip.text
    assert (as_zip.json()["kind"], as_zip.json()["num_train"]) == ("imagefolder", 6)

    job = production.client.post(
        "/api/v1/jobs",
        json={
            "model_id": model.json()["id"],
            "method": "uniform",
            "dataset_id": dataset["id"],
            "params": {"bits": 4},
        },
    ).json()
    in_use = production.client.delete(f"/api/v1/datasets/{dataset['id']}")
    done = production.wait_for(job["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error_message"]
    assert in_use.status_code in (204, 409)  # refused while the job was queued or running
    if in_use.status_code == 409:
        assert in_use.json()["error"]["code"] == "conflict"
        assert production.client.delete(f"/api/v1/datasets/{dataset['id']}").status_code == 204
    assert not folders[0].exists()  # deleting the dataset removed its files
    assert production.client.get(f"/api/v1/datasets/{dataset['id']}").status_code == 404


@pytest.fixture
def small_archive_limit(production: Service) -> Iterator[int]:
    """The API with a 1 MiB unpacked-size limit, so a bomb stays small on the wire."""
    limit = 2**20
    app = production.client.app
    app.dependency_overrides[get_settings] = lambda: production.settings.model_copy(  # type: ignore[attr-defined]
        update={"max_archive_bytes": limit}
    )
    try:
        yield limit
    finally:
        app.dependency_overrides.pop(get_settings, None)  # type: ignore[attr-defined]


def test_hostile_archives_are_refused_and_change_nothing(
    production: Service, tmp_path: Path, small_archive_limit: int
) -> None:
    good = _tree(2, 1)
    evil = _zip(tmp_path / "evil.zip", {**good, "shapes/../../../../evil.png": _png(0, 1)})
    link = tmp_path / "link.tgz"
    with tarfile.open(link, "w:gz") as archive:
        for name, data in good.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("shapes/train/circle/passwd.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    bomb = _zip(tmp_path / "bomb.zip", {**good, "shapes/train/circle/big.png": bytes(8 * 2**20)})
    assert bomb.stat().st_size < 100_000
    script = _zip(tmp_path / "script.zip", {**good, "shapes/val/cross/run.sh": b"rm -rf /"})
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    renamed = {k.replace("val/square", "val/circles"): v for k, v in good.items()}
    mismatch = _zip(tmp_path / "mismatch.zip", renamed)
    no_val_dogs = {k: v for k, v in good.items() if not k.startswith("shapes/val/cross/")}
    empty_class = _zip(tmp_path / "empty.zip", {**no_val_dogs, "shapes/val/cross/": b""})
    broken = _zip(tmp_path / "broken.zip", {**good, "shapes/train/cross/9.png": b"\x89PNG junk"})

    before = production.client.get("/api/v1/datasets").json()
    files_before = _blob_files(production)
    cases = [
        (evil, {}, 422, "unsafe_archive", "'..'"),
        (link, {}, 422, "unsafe_archive", "symbolic link"),
        (bomb, {}, 413, "archive_too_large", str(small_archive_limit)),
        (script, {}, 422, "invalid_archive", "shapes/val/cross/run.sh"),
        (noise, {"kind": "imagefolder"}, 422, "invalid_archive", "not a .zip, .tar or .tar.gz"),
        (mismatch, {}, 422, "invalid_dataset", "only in val: ['circles']"),
        (empty_class, {}, 422, "invalid_dataset", "cross"),
        (broken, {}, 422, "invalid_dataset", "train/cross/9.png"),
    ]
    for path, form, status, code, needle in cases:
        response = _post(production, path, path.name, **form)
        assert response.status_code == status, (path.name, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (path.name, error)
        assert needle in error["message"], (path.name, error)
        assert str(production.settings.data_dir) not in response.text  # no server paths
        assert str(production.settings.resolved_blob_dir) not in response.text
    assert production.client.get("/api/v1/datasets").json() == before
    assert _blob_files(production) == files_before
    data_dir = production.settings.data_dir
    assert not list(data_dir.parent.rglob("evil.png"))
