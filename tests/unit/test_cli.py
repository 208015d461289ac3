"""``python -m quantcore`` end to end on the built-in digits data: train, quantize, evaluate,
inspect, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DIGITS = ["--dataset", "digits", "--image-size", "28", "--quiet"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantcore", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = tmp_path_factory.mktemp("cli") / "lenet5.safetensors"
    run = _cli(
        "train",
        "--arch",
        "lenet5",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--out",
        str(weights),
        "--json",
        *DIGITS,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["top1"] > 80  # digits is easy: three epochs of LeNet5 are plenty
    assert len(summary["history"]) == 3
    return weights


def test_quantize_then_evaluate_the_artifact_gives_the_same_accuracy(
    trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lenet5-4bit.qpack"
    run = _cli(
        "quantize",
        "--arch",
        "lenet5",
        "--weights",
        str(trained),
        "--method",
        "uniform",
        "--param",
        "bits=4",
        "--out",
        str(out),
        "--json",
        *DIGITS,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["top1"] > result["float_top1"] - 5
    assert result["average_bits"] == 4.0
    assert result["file_bytes"] == out.stat().st_size
    assert result["quantized_bytes"] < result["float_bytes"] / 2

    evaluated = _cli("evaluate", str(out), "--json", *DIGITS)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["top1"] == result["top1"]

    inspected = _cli("inspect", str(out), "--json")
    assert inspected.returncode == 0, inspected.stderr
    manifest = json.loads(inspected.stdout)
    assert manifest["method"]["params"]["bits"] == 4
    assert [row["bits"] for row in manifest["layer_table"]] == [4.0, 4.0]

    table = _cli("inspect", str(out))
    assert "rel_error" in table.stdout
    assert "theoretical" in table.stdout


def test_bad_input_exits_2_with_a_message(trained: Path, tmp_path: Path) -> None:
    bad_bits = _cli(
        "quantize",
        "--arch",
        "lenet5",
        "--weights",
        str(trained),
        "--method",
        "uniform",
        "--param",
        "bits=12",
        "--out",
        str(tmp_path / "x.qpack"),
        *DIGITS,
    )
    assert bad_bits.returncode == 2
    assert "bits" in bad_bits.stderr
    assert "less than or equal to 8" in bad_bits.stderr
    wrong_arch = _cli("evaluate", str(trained), "--arch", "resnet20", *DIGITS)
    assert wrong_arch.returncode == 2
    assert "missing" in wrong_arch.stderr
    not_a_qpack = tmp_path / "junk.qpack"
    not_a_qpack.write_bytes(b"hello")
    junk = _cli("inspect", str(not_a_qpack))
    assert junk.returncode == 2
    assert "not a readable zip" in junk.stderr
