"""The promise of the README: LeNet5 trained by the CLI for 5 epochs on Fashion-MNIST reaches at
least 90% top-1 on its test set, on a CPU, in a few minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantcore.data import list_datasets

FASHION = next(d for d in list_datasets() if d.name == "fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(FASHION.needs_root, reason="Debian's dataset-fashion-mnist is not installed")
def test_lenet5_reaches_90_percent_on_fashion_mnist(tmp_path: Path) -> None:
    out = tmp_path / "lenet5.safetensors"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantcore",
            "train",
            "--arch",
            "lenet5",
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "5",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["top1"] >= 90.0
    assert out.exists()
