"""Dataset archives: safe unpacking of ImageFolder trees (api.archives) and image checks.

Every archive is built here, byte for byte where a header has to lie. A refused archive must
leave nothing behind: not in the store folder it was unpacked into, not next to it.
"""

from __future__ import annotations

import io
import json
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.archives import (
    ArchiveLimits,
    copy_limited,
    delete_tree,
    extract_imagefolder,
    first_zip_member,
    publish_tree,
    sniff,
)
from api.errors import ApiError
from api.storage import LocalBlobStore
from quantcore import InvalidDataset, load_dataset
from quantcore.data.imagefolder import scan_images

LIMITS = ArchiveLimits(max_members=100, max_bytes=10 * 2**20)


def png(seed: int = 0, size: tuple[int, int] = (8, 8)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def tree(classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 2) -> dict[str, bytes]:
    names = [
        f"{s}/{c}/{i}.png" for s in ("train", "val") for c in classes for i in range(per_class)
    ]
    return {name: png(seed) for seed, name in enumerate(names)}


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def container_of(path: Path) -> str:
    found = sniff(path.read_bytes()[:512])
    assert found is not None
    return found


def refused(
    archive: Path, store: Path, limits: ArchiveLimits = LIMITS, container: str | None = None
) -> ApiError:
    with pytest.raises(ApiError) as excinfo:
        extract_imagefolder(
            archive,
            container or container_of(archive),  # type: ignore[arg-type]
            store,
            limits,
            "mine.zip",
        )
    assert list(store.iterdir()) == [], "a refused archive left files in the store"
    return excinfo.value


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    return folder


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --- good trees --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_a_good_tree_unpacks_and_loads(kind: str, tmp_path: Path, store: Path) -> None:
    members = tree()
    path = tmp_path / f"data.{kind}"
    if kind == "zip":
        make_zip(path, members)
    else:
        make_tar(path, members, "w:gz" if kind == "tar.gz" else "w")
    folder = extract_imagefolder(path, container_of(path), store, LIMITS, "data")  # type: ignore[arg-type]
    assert folder.parent == store  # hidden until published
    assert folder.name.startswith(".")
    assert files_under(folder) == set(members)
    assert (folder / "train/cat/1.png").read_bytes() == members["train/cat/1.png"]
    bundle = load_dataset("imagefolder", root=folder, image_size=8, augment=False)
    assert (bundle.classes, len(bundle.train), len(bundle.val)) == (("cat", "dog"), 4, 4)


def test_one_wrapping_folder_is_dropped_and_junk_skipped(tmp_path: Path, store: Path) -> None:
    members = {f"mydata/{k}": v for k, v in tree().items()}
    members["mydata/"] = b""
    members["__MACOSX/mydata/train/cat/._0.png"] = b"resource fork"
    members["mydata/train/.DS_Store"] = b"finder"
    path = make_zip(tmp_path / "wrapped.zip", members)
    folder = extract_imagefolder(path, "zip", store, LIMITS, "wrapped.zip")
    assert files_under(folder) == set(tree())


def test_publish_renames_the_whole_folder_and_delete_removes_it(
    tmp_path: Path, store: Path
) -> None:
    blobs = LocalBlobStore(store)
    path = make_zip(tmp_path / "data.zip", tree())
    folder = extract_imagefolder(path, "zip", blobs.root, LIMITS, "data.zip")
    key = publish_tree(blobs, folder)
    assert not folder.exists()
    assert files_under(blobs.path(key)) == set(tree())
    delete_tree(blobs, key)
    assert not blobs.path(key).exists()
    assert [p.name for p in store.rglob("*") if p.is_file()] == []


# --- names that would leave the folder -----------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_dot_dot_is_refused(make, tmp_path: Path, store: Path) -> None:
    members = {**tree(), "train/cat/../../../evil.png": png()}
    error = refused(make(tmp_path / "evil.archive", members), store)
    assert (error.status, error.code) == (422, "unsafe_archive")
    assert "'..'" in error.message
    assert "evil.png" in error.message
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_absolute_paths_are_refused(make, tmp_path: Path, store: Path) -> None:
    target = tmp_path / "outside" / "abs.png"
    members = {**tree(), str(target): png()}
    error = refused(make(tmp_path / "abs.archive", members), store)
    assert (error.status, error.code) == (422, "unsafe_archive")
    assert "absolute" in error.message
    assert not target.exists()


def test_backslash_names_are_refused(tmp_path: Path, store: Path) -> None:
    error = refused(make_zip(tmp_path / "win.zip", {**tree(), "..\\evil.png": png()}), store)
    assert error.code == "unsafe_archive"
    assert "backslash" in error.message


# --- links and devices -------------------------------------------------------------------------


def test_zip_symlink_is_refused(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "link.zip", tree())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo("train/cat/link.png")
        info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    error = refused(path, store)
    assert (error.status, error.code) == (422, "unsafe_archive")
    assert "symbolic link" in error.message
    assert "link.png" in error.message


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device"),
        (tarfile.BLKTYPE, "device"),
        (tarfile.FIFOTYPE, "pipe"),
    ],
)
def test_tar_links_and_devices_are_refused(
    kind: bytes, words: str, tmp_path: Path, store: Path
) -> None:
    path = make_tar(tmp_path / "special.tar", tree())
    with tarfile.open(path, "a") as archive:
        info = tarfile.TarInfo("train/cat/special.png")
        info.type = kind
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else "train/cat/0.png"
        archive.addfile(info)
    error = refused(path, store)
    assert (error.status, error.code) == (422, "unsafe_archive")
    assert words in error.message
    assert "special.png" in error.message


# --- size and count limits ---------------------------------------------------------------------


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {**tree(), "train/cat/big.png": bytes(8 * 2**20)})
    assert path.stat().st_size < 64 * 1024  # tiny on the wire
    error = refused(path, store, ArchiveLimits(max_members=100, max_bytes=2**20))
    assert (error.status, error.code) == (413, "archive_too_large")
    assert str(2**20) in error.message
    assert "headers declare" not in error.message  # caught from the headers, not by reading


def test_a_tar_gz_bomb_is_refused(tmp_path: Path, store: Path) -> None:
    members = {**tree(), "train/cat/big.png": bytes(8 * 2**20)}
    path = make_tar(tmp_path / "bomb.tar.gz", members, "w:gz")
    error = refused(path, store, ArchiveLimits(max_members=100, max_bytes=2**20))
    assert (error.status, error.code) == (413, "archive_too_large")


def _patch_sizes(raw: bytearray, name: bytes, size: int) -> None:
    """Write ``size`` as the uncompressed size of ``name`` in its local and central headers."""
    local = raw.find(b"PK\x03\x04")
    while local >= 0:
        length = int.from_bytes(raw[local + 26 : local + 28], "little")
        if raw[local + 30 : local + 30 + length] == name:
            raw[local + 22 : local + 26] = size.to_bytes(4, "little")
        local = raw.find(b"PK\x03\x04", local + 4)
    central = raw.find(b"PK\x01\x02")
    while central >= 0:
        length = int.from_bytes(raw[central + 28 : central + 30], "little")
        if raw[central + 46 : central + 46 + length] == name:
            raw[central + 24 : central + 28] = size.to_bytes(4, "little")
        central = raw.find(b"PK\x01\x02", central + 4)


def test_a_zip_whose_header_understates_a_member_is_refused(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", {**tree(), "train/cat/big.png": bytes(4 * 2**20)})
    raw = bytearray(path.read_bytes())
    _patch_sizes(raw, b"train/cat/big.png", 100)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive:  # the lie is what a reader sees
        assert archive.getinfo("train/cat/big.png").file_size == 100
    error = refused(path, store, ArchiveLimits(max_members=100, max_bytes=2**20))
    assert error.status in (413, 422)
    assert "big.png" in error.message or error.code == "archive_too_large"


def test_copying_stops_once_more_than_the_budget_was_read() -> None:
    target = io.BytesIO()
    with pytest.raises(ApiError) as excinfo:
        copy_limited(io.BytesIO(bytes(3 * 2**20)), target, 2**20 + 5, limit=2**20 + 5)
    assert (excinfo.value.status, excinfo.value.code) == (413, "archive_too_large")
    assert len(target.getvalue()) <= 2**20 + 5
    assert copy_limited(io.BytesIO(b"abc"), io.BytesIO(), 3, limit=3) == 3


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_too_many_members_are_refused(make, tmp_path: Path, store: Path) -> None:
    path = make(tmp_path / "many.archive", tree(per_class=3))  # 12 files
    error = refused(path, store, ArchiveLimits(max_members=10, max_bytes=2**20))
    assert (error.status, error.code) == (413, "archive_too_large")
    assert "10 entries" in error.message


def test_a_zip_whose_end_record_understates_its_count_is_refused(
    tmp_path: Path, store: Path
) -> None:
    path = make_zip(tmp_path / "count.zip", tree(per_class=3))
    raw = bytearray(path.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    raw[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2  # entries on disk, entries total
    path.write_bytes(bytes(raw))
    error = refused(path, store, ArchiveLimits(max_members=10, max_bytes=2**20))
    assert (error.status, error.code) == (413, "archive_too_large")


# --- what the tree holds -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_non_image_members_are_named(make, tmp_path: Path, store: Path) -> None:
    members = {**tree(), "train/cat/notes.txt": b"hello", "val/dog/run.sh": b"rm -rf /"}
    error = refused(make(tmp_path / "mixed.archive", members), store)
    assert (error.status, error.code) == (422, "invalid_archive")
    assert "train/cat/notes.txt" in error.message
    assert "val/dog/run.sh" in error.message
    assert error.details["members"] == ["train/cat/notes.txt", "val/dog/run.sh"]


def test_files_outside_the_splits_are_named(tmp_path: Path, store: Path) -> None:
    members = {**tree(), "README.md": b"read me", "test/cat/0.png": png()}
    error = refused(make_zip(tmp_path / "extra.zip", members), store)
    assert error.code == "invalid_archive"
    assert "README.md" in error.message
    assert "test/cat/0.png" in error.message


def test_a_missing_split_is_named(tmp_path: Path, store: Path) -> None:
    members = {k: v for k, v in tree().items() if k.startswith("train/")}
    error = refused(make_zip(tmp_path / "noval.zip", members), store)
    assert error.code == "invalid_archive"
    assert "val/" in error.message


@pytest.mark.parametrize("make", [make_zip, make_tar])
def test_an_empty_archive_is_refused(make, tmp_path: Path, store: Path) -> None:
    container = "zip" if make is make_zip else "tar"  # an empty tar has no magic bytes
    error = refused(make(tmp_path / "empty.archive", {}), store, container=container)
    assert (error.status, error.code) == (422, "invalid_archive")
    assert "empty" in error.message


def test_a_member_twice_is_refused(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "twice.zip", tree())
    with (
        pytest.warns(UserWarning, match="Duplicate name"),
        zipfile.ZipFile(path, "a") as archive,
    ):
        archive.writestr("train/cat/0.png", png(99))
    error = refused(path, store)
    assert error.code == "invalid_archive"
    assert "twice" in error.message


def test_a_gzip_that_is_not_a_tar_is_refused(tmp_path: Path, store: Path) -> None:
    import gzip

    path = tmp_path / "plain.gz"
    path.write_bytes(gzip.compress(b"just text, no tar headers" * 100))
    error = refused(path, store)
    assert (error.status, error.code) == (422, "invalid_archive")


def test_a_truncated_zip_is_refused(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "cut.zip", tree())
    path.write_bytes(path.read_bytes()[:-30])
    error = refused(path, store)
    assert error.status == 422


# --- telling archives apart ----------------------------------------------------------------------


def test_sniff_reads_magic_bytes_not_names(tmp_path: Path) -> None:
    npz = tmp_path / "data.zip"  # the names lie both ways
    with open(npz, "wb") as f:
        np.savez(f, x_train=np.zeros(2))
    images = make_zip(tmp_path / "data.npz", tree())
    assert sniff(npz.read_bytes()[:512]) == sniff(images.read_bytes()[:512]) == "zip"
    assert first_zip_member(npz.read_bytes()[:512]) == "x_train.npy"
    assert first_zip_member(images.read_bytes()[:512]) == "train/cat/0.png"
    assert sniff(make_tar(tmp_path / "a.bin", tree()).read_bytes()[:512]) == "tar"
    gz = make_tar(tmp_path / "b.bin", tree(), "w:gz")
    assert sniff(gz.read_bytes()[:512]) == "gzip"
    assert sniff(b"\x89PNG\r\n\x1a\n" + bytes(600)) is None


# --- image checks (quantcore.data.imagefolder) ---------------------------------------------------


def _folder(root: Path, extra: dict[str, bytes]) -> Path:
    for name, data in {**tree(), **extra}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_scan_images_counts_sizes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"train/cat/wide.png": png(5, (8, 12))})
    bundle = load_dataset("imagefolder", root=root, augment=False)
    sizes = scan_images(bundle.train, max_pixels=10_000)  # type: ignore[arg-type]
    assert sizes == {(8, 8): 4, (8, 12): 1}


def test_scan_images_names_an_undecodable_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"train/dog/broken.png": png()[:40]})
    bundle = load_dataset("imagefolder", root=root, augment=False)
    with pytest.raises(InvalidDataset, match=re.escape("train/dog/broken.png")) as excinfo:
        scan_images(bundle.train, max_pixels=10_000)  # type: ignore[arg-type]
    assert str(tmp_path) not in excinfo.value.message


def test_scan_images_refuses_formats_that_run_other_programs(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    root = _folder(tmp_path / "ds", {"val/cat/ghost.png": eps})
    bundle = load_dataset("imagefolder", root=root, augment=False)
    with pytest.raises(InvalidDataset, match=re.escape("val/cat/ghost.png")):
        scan_images(bundle.val, max_pixels=10_000)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="cannot identify"):  # the loader a job uses, too
        bundle.val[[p for p, _ in bundle.val.samples].index(str(root / "val/cat/ghost.png"))]  # type: ignore[attr-defined]


def test_scan_images_refuses_images_past_the_pixel_limit(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"train/cat/huge.png": png(1, (40, 40))})
    bundle = load_dataset("imagefolder", root=root, augment=False)
    with pytest.raises(InvalidDataset, match=re.escape("huge.png: 40x40 is more than 1000 pixels")):
        scan_images(bundle.train, max_pixels=1000)


def test_a_zip_name_that_is_not_utf8_is_refused(tmp_path: Path, store: Path) -> None:
    path = make_zip(tmp_path / "names.zip", {**tree(), "train/cat/caf\u00e9.png": png()})
    raw = path.read_bytes()
    assert raw.count("caf\u00e9".encode()) == 2  # local and central header, flagged UTF-8
    path.write_bytes(raw.replace("caf\u00e9".encode(), b"caf\xff\xfe"))
    error = refused(path, store)
    assert (error.status, error.code) == (422, "invalid_archive")


def test_undecodable_tar_names_are_shown_in_valid_json(tmp_path: Path, store: Path) -> None:
    path = make_tar(tmp_path / "names.tar", {**tree(), "train/cat/notes\udcff.txt": b"x"})
    error = refused(path, store)
    assert error.code == "invalid_archive"
    assert "notes" in error.message
    json.dumps(error.message, ensure_ascii=False).encode("utf-8")  # what the API sends
