"""``python -m worker`` starts one process per visible GPU, each pinned to its device."""

from __future__ import annotations

import pytest

import worker.__main__ as worker_main
from worker.__main__ import worker_plans


def _no_detection() -> list[str]:
    raise AssertionError("CUDA_VISIBLE_DEVICES was set: nothing to detect")


def test_one_pinned_worker_per_listed_device() -> None:
    plans = worker_plans("0, 2", _no_detection)
    assert plans == [
        ("gpu0", {"CUDA_VISIBLE_DEVICES": "0"}),
        ("gpu2", {"CUDA_VISIBLE_DEVICES": "2"}),
    ]


def test_detected_devices_when_the_variable_is_unset() -> None:
    plans = worker_plans(None, lambda: ["0", "1", "2"])
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in plans] == ["0", "1", "2"]


@pytest.mark.parametrize(("visible", "detected"), [("", ["0"]), (None, [])])
def test_one_cpu_worker_without_gpus(visible: str | None, detected: list[str]) -> None:
    assert worker_plans(visible, lambda: detected) == [("cpu", {"CUDA_VISIBLE_DEVICES": ""})]


def test_main_starts_each_celery_process_with_its_own_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[list[str], dict[str, str]]] = []

    class FinishedProcess:  # the edge: process creation
        returncode = 0

        def __init__(self, args: list[str], env: dict[str, str]) -> None:
            started.append((args, env))

        def poll(self) -> int:
            return 0

        def send_signal(self, _signum: int) -> None:
            pass

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(worker_main.subprocess, "Popen", FinishedProcess)
    monkeypatch.setattr(worker_main.signal, "signal", lambda *_args: None)  # keep pytest's
    assert worker_main.main() == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in started] == ["3", "5"]
    names = [args[args.index("--hostname") + 1].split("@")[0] for args, _ in started]
    assert names == ["gpu3", "gpu5"]
    assert all(args[args.index("--concurrency") + 1] == "1" for args, _ in started)
