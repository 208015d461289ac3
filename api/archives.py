"""Dataset archives (``.zip``, ``.tar``, ``.tar.gz``) unpacked safely into the blob store.

An archive holds an ImageFolder tree, ``train/<class>/<image>`` and ``val/<class>/<image>``
(deeper folders inside a class are fine), optionally inside one top-level folder, which is
dropped. Images are ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp``; hidden entries (a name starting
with ``.``) and ``__MACOSX/`` are skipped. Everything else is refused before a byte is written:
absolute names, ``..``, backslashes, links, devices, encrypted or sparse members, more than
``max_members`` entries, a declared unpacked size over ``max_bytes``, files outside the tree and
files that are not images. While unpacking, the bytes actually read are counted against
``max_bytes`` too, since a header can lie. The tree is written into a fresh hidden folder of the
blob store and renamed to its key only once it is complete and valid, so a reader never sees half
a dataset; nothing is ever written outside that folder (no member's name is used unchecked).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from api.errors import ApiError
from api.storage import CHUNK, LocalBlobStore

Container = Literal["zip", "tar", "gzip"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "val")
SNIFF_BYTES = 512
_SKIPPED_TOP = "__MACOSX"
_SHOWN = 10  # offending names listed in a message
_DIRECTORY_ENTRY_ALLOWANCE = 1024  # bytes of zip central directory allowed per member
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_bytes: int


@dataclass(frozen=True)
class _Entry:
    name: str  # as the archive spells it, for messages
    parts: tuple[str, ...]  # checked path components
    is_dir: bool
    size: int  # declared unpacked size
    ref: zipfile.ZipInfo | tarfile.TarInfo


def _unsafe(name: str, problem: str) -> ApiError:
    name = _shown(name)
    return ApiError(422, "unsafe_archive", f"archive member {name!r} {problem}", {"member": name})


def _invalid(message: str, **details: object) -> ApiError:
    return ApiError(422, "invalid_archive", message, details)


def _too_large(message: str, **details: object) -> ApiError:
    return ApiError(413, "archive_too_large", message, details)


def sniff(head: bytes) -> Container | None:
    """What the first bytes of a file say it is: a zip, a plain tar, a gzip stream, or None."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a member, or the end of an empty zip
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def first_zip_member(head: bytes) -> str | None:
    """The name in a zip's first local header (``x_train.npy`` for an ``np.savez`` file)."""
    if head[:4] != b"PK\x03\x04" or len(head) < 30:
        return None
    length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + length].decode("utf-8", "replace")


def _shown(name: str) -> str:
    """A member's name fit for a JSON message (tar keeps undecodable bytes as surrogates)."""
    return name.encode("utf-8", "replace").decode("utf-8")


def _parts(name: str) -> tuple[str, ...]:
    """Path components of a member's name; refuses names that could leave the target folder."""
    if "\0" in name:
        raise _unsafe(name, "has a NUL in its name")
    if "\\" in name:
        raise _unsafe(name, "has a backslash in its name; use / between folders")
    if name.startswith("/") or _DRIVE.match(name):
        raise _unsafe(name, "is an absolute path; names must be relative")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _unsafe(name, "has a '..' component, which would leave the dataset folder")
    return parts


def _check_count(count: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise _too_large(
            f"the archive has more than {limits.max_members} entries (QS_MAX_ARCHIVE_MEMBERS)",
            limit=limits.max_members,
        )


def _check_declared(total: int, limits: ArchiveLimits) -> None:
    if total > limits.max_bytes:
        raise _too_large(
            f"the archive unpacks to more than {limits.max_bytes} bytes (QS_MAX_ARCHIVE_BYTES)",
            limit=limits.max_bytes,
        )


# --- zip ---------------------------------------------------------------------------------------


def _zip_directory(path: Path) -> tuple[int, int]:
    """``(entries, directory bytes)`` from a zip's end records, read before zipfile parses it."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        start = max(0, end - _EOCD.size - 0xFFFF)  # the record plus the longest comment
        f.seek(start)
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise _invalid("not a readable zip archive (no end of central directory)")
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(tail, at)
    record = at - _ZIP64_LOCATOR_SIZE - _ZIP64_EOCD.size
    if record >= 0 and tail[at - _ZIP64_LOCATOR_SIZE : at - 16] == b"PK\x06\x07":
        fields = _ZIP64_EOCD.unpack_from(tail, record)
        if fields[0] == b"PK\x06\x06":
            entries, size = fields[7], fields[8]
    return entries, size


def _zip_entries(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[_Entry]:
    infos = archive.infolist()
    _check_count(len(infos), limits)  # the end record's count can lie; the directory cannot
    entries: list[_Entry] = []
    declared = 0
    for info in infos:
        parts = _parts(info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise _unsafe(info.filename, "is a symbolic link; only files and folders are allowed")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _unsafe(info.filename, "is a device, pipe or socket; only files and folders")
        if info.flag_bits & 0x1:
            name = _shown(info.filename)
            raise _invalid(f"archive member {name!r} is encrypted", member=name)
        declared += info.file_size
        _check_declared(declared, limits)
        is_dir = info.is_dir() or kind == stat.S_IFDIR
        entries.append(_Entry(_shown(info.filename), parts, is_dir, info.file_size, info))
    return entries


# --- tar ---------------------------------------------------------------------------------------


def _tar_entries(archive: tarfile.TarFile, limits: ArchiveLimits) -> list[_Entry]:
    entries: list[_Entry] = []
    declared = 0
    while (member := archive.next()) is not None:  # one header at a time: stops at the limit
        _check_count(len(entries) + 1, limits)
        parts = _parts(member.name)
        if member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            raise _unsafe(member.name, f"is a {kind} link; only files and folders are allowed")
        if member.ischr() or member.isblk() or member.isfifo():
            raise _unsafe(member.name, "is a device or pipe; only files and folders are allowed")
        if member.issparse() or not (member.isreg() or member.isdir()):
            raise _unsafe(member.name, "is not a plain file or folder")
        declared += member.size
        _check_declared(declared, limits)
        entries.append(_Entry(_shown(member.name), parts, member.isdir(), member.size, member))
    return entries


# --- layout ------------------------------------------------------------------------------------


def _skipped(parts: tuple[str, ...]) -> bool:
    return not parts or parts[0] == _SKIPPED_TOP or any(p.startswith(".") for p in parts)


def _plan(entries: list[_Entry], filename: str) -> list[tuple[_Entry, tuple[str, ...]]]:
    """Where each kept entry goes inside the dataset folder; refuses anything off the layout."""
    kept = [e for e in entries if not _skipped(e.parts)]
    if not any(not e.is_dir for e in kept):
        raise _invalid(f"{filename} holds no files: it is empty")
    tops = {e.parts[0] for e in kept}
    strip = 1 if len(tops) == 1 and not tops & set(SPLITS) else 0  # one wrapping folder
    plan = [(e, e.parts[strip:]) for e in kept if e.parts[strip:]]
    outside = [e.name for e, p in plan if p[0] not in SPLITS or (not e.is_dir and len(p) < 3)]
    if outside:
        raise _invalid(
            f"{filename}: everything must be inside train/<class>/ or val/<class>/; "
            f"not: {', '.join(outside[:_SHOWN])}",
            members=outside[:_SHOWN],
        )
    not_images = [e.name for e, p in plan if not e.is_dir and not _is_image_name(p[-1])]
    if not_images:
        raise _invalid(
            f"{filename}: only images ({', '.join(IMAGE_SUFFIXES)}) may be in the class "
            f"folders; not images: {', '.join(not_images[:_SHOWN])}",
            members=not_images[:_SHOWN],
        )
    for split in SPLITS:
        if not any(p[0] == split and not e.is_dir for e, p in plan):
            raise _invalid(f"{filename} has no images under {split}/<class>/", split=split)
    return plan


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


# --- unpacking ---------------------------------------------------------------------------------


def copy_limited(source: IO[bytes], target: IO[bytes], budget: int, *, limit: int) -> int:
    """Copy ``source`` to ``target``; 413 once more than ``budget`` bytes were read from it."""
    copied = 0
    while chunk := source.read(CHUNK):
        copied += len(chunk)
        if copied > budget:
            raise _too_large(
                f"the archive unpacks to more than {limit} bytes (QS_MAX_ARCHIVE_BYTES), "
                "more than its headers declare",
                limit=limit,
            )
        target.write(chunk)
    return copied


def _source(reader: zipfile.ZipFile | tarfile.TarFile, entry: _Entry) -> IO[bytes] | None:
    try:
        if isinstance(reader, zipfile.ZipFile) and isinstance(entry.ref, zipfile.ZipInfo):
            return reader.open(entry.ref)
        if isinstance(reader, tarfile.TarFile) and isinstance(entry.ref, tarfile.TarInfo):
            return reader.extractfile(entry.ref)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, tarfile.TarError) as exc:
        raise _invalid(f"archive member {entry.name!r} cannot be read ({exc})") from None
    raise AssertionError("an entry read with another archive")


def _write(
    reader: zipfile.ZipFile | tarfile.TarFile, entry: _Entry, target: Path, budget: int, limit: int
) -> int:
    source = _source(reader, entry)
    if source is None:
        raise _unsafe(entry.name, "is not a plain file")
    try:
        with source, open(target, "xb") as out:
            return copy_limited(source, out, budget, limit=limit)
    except FileExistsError:
        raise _invalid(f"archive member {entry.name!r} appears twice") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApiError(507, "storage_full", "the server's storage is full; try later") from None
        if exc.filename is None:  # the member's data is corrupt (gzip, zlib, CRC)
            raise _invalid(f"archive member {entry.name!r} is corrupt ({exc})") from None
        raise _invalid(f"archive member {entry.name!r} cannot be stored ({exc.strerror})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, tarfile.TarError) as exc:
        raise _invalid(f"archive member {entry.name!r} is corrupt ({exc})") from None


def _unpack(
    reader: zipfile.ZipFile | tarfile.TarFile,
    plan: list[tuple[_Entry, tuple[str, ...]]],
    folder: Path,
    limits: ArchiveLimits,
) -> None:
    base = folder.resolve()
    written = 0
    for entry, parts in plan:
        target = base.joinpath(*parts)
        if os.path.commonpath([base, target]) != str(base):  # _parts already refused these
            raise _unsafe(entry.name, "would be written outside the dataset folder")
        try:
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder should be
            raise _invalid(f"archive member {entry.name!r} clashes with another") from None
        except OSError as exc:
            raise _invalid(
                f"archive member {entry.name!r} cannot be stored ({exc.strerror})"
            ) from None
        written += _write(reader, entry, target, limits.max_bytes - written, limits.max_bytes)


@contextmanager
def _open(path: Path, container: Container) -> Iterator[zipfile.ZipFile | tarfile.TarFile]:
    try:
        if container == "zip":
            with zipfile.ZipFile(path) as archive:
                yield archive
        else:
            with tarfile.open(path, "r:gz" if container == "gzip" else "r:") as archive:
                yield archive
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise _invalid(f"the archive cannot be read ({exc})") from None
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise _invalid(f"the archive cannot be read ({exc})") from None


def extract_imagefolder(
    archive: Path, container: Container, into: Path, limits: ArchiveLimits, filename: str
) -> Path:
    """Unpack ``archive`` into a new hidden folder under ``into`` and return that folder.

    Raises :class:`ApiError` (413 or 422) and leaves nothing behind when the archive is unsafe,
    too large or not an ImageFolder tree of images; the message names the offending member.
    """
    if container == "zip":
        entries, directory = _zip_directory(archive)
        _check_count(entries, limits)
        if directory > limits.max_members * _DIRECTORY_ENTRY_ALLOWANCE:
            raise _too_large(
                f"the archive's directory ({directory} bytes) is too large for at most "
                f"{limits.max_members} entries (QS_MAX_ARCHIVE_MEMBERS)",
                limit=limits.max_members,
            )
    folder = Path(tempfile.mkdtemp(prefix=".extract-", dir=into))
    try:
        with _open(archive, container) as reader:
            if isinstance(reader, zipfile.ZipFile):
                found = _zip_entries(reader, limits)
            else:
                found = _tar_entries(reader, limits)
            _unpack(reader, _plan(found, filename), folder, limits)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def publish_tree(storage: LocalBlobStore, folder: Path, prefix: str = "datasets") -> str:
    """Rename a complete folder (made under ``storage.root``) to a new key; returns the key."""
    key = f"{prefix}/{secrets.token_hex(16)}"
    target = storage.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(folder, target)
    return key


def delete_tree(storage: LocalBlobStore, key: str) -> None:
    """Remove a published folder: renamed away first, so it vanishes at once, then deleted."""
    path = storage.path(key)
    if not path.is_dir():
        storage.delete(key)
        return
    trash = storage.root / f".deleting-{secrets.token_hex(8)}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
