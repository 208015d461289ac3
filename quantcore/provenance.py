"""Where a result came from: the reproducibility manifest written into artifacts and reports.

Everything needed to run the same quantization again and to tell why two runs differ: the code
(quantcore's version and, in a git checkout, the revision and whether it had local changes), the
numerical stack (Python, torch, CUDA, cuDNN), the device, the seed, and the identity of the
inputs (sha256 of the float weights and of the dataset's files, or a built-in's name and the
version of the package that ships it).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from quantcore.data.builtin import list_datasets

_CHUNK = 1 << 20
_REPO = Path(__file__).resolve().parent.parent


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: str | Path) -> str:
    """One sha256 over every file under ``root``: sorted relative paths and their contents' sha256,
    so renaming, adding or changing any file changes it."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


@cache
def code_version() -> dict[str, Any]:
    """quantcore's package version, and the git revision when running from a checkout."""
    try:
        version = metadata.version("quantization-service")
    except metadata.PackageNotFoundError:
        from quantcore import __version__ as version
    info: dict[str, Any] = {"version": version, "git_revision": None, "git_dirty": None}
    if (_REPO / ".git").exists():
        try:
            info["git_revision"] = _git("rev-parse", "HEAD")
            info["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def environment(device: torch.device | str) -> dict[str, Any]:
    """The numerical stack and the device a run used."""
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "machine": platform.machine(),
    }


@cache
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dataset_identity(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """What pins a dataset down: the sha256 of its files (an uploaded file or folder, or a
    built-in's default folder), or, for a built-in shipped by a package, that package's version."""
    if root is None:
        info = next((d for d in list_datasets() if d.name == name), None)
        if info is not None and info.default_root is not None:
            root = info.default_root
    if root is not None:
        path = Path(root)
        sha = file_sha256(path) if path.is_file() else tree_sha256(path)
        return {"name": name, "sha256": sha}
    if name == "digits":  # scikit-learn ships it
        return {"name": name, "source": f"scikit-learn {metadata.version('scikit-learn')}"}
    return {"name": name}


def manifest(
    *,
    method: str,
    params: Mapping[str, Any],
    seed: int,
    device: torch.device | str,
    model_sha256: str,
    dataset: Mapping[str, Any],
    extra: Iterable[tuple[str, Any]] = (),
) -> dict[str, Any]:
    """The reproducibility manifest of one run."""
    return {
        "method": method,
        "params": dict(params),
        "seed": seed,
        "code": code_version(),
        "environment": environment(device),
        "model_sha256": model_sha256,
        "dataset": dict(dataset),
        **dict(extra),
    }
