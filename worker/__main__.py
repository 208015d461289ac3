"""``python -m worker``: one Celery worker process per visible CUDA device, or one CPU worker.

Each GPU worker is pinned with CUDA_VISIBLE_DEVICES and runs one job at a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from worker.devices import visible_cuda_devices


def worker_command(name: str, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--queues",
        "jobs",
        "--hostname",
        f"{name}@{socket.gethostname()}",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def worker_plans(
    cuda_visible: str | None, detect: Callable[[], list[str]]
) -> list[tuple[str, dict[str, str]]]:
    """One (name, environment) per worker process: one per GPU, each pinned to its device with
    CUDA_VISIBLE_DEVICES, or one CPU worker. ``cuda_visible`` (the variable as this process got
    it) wins over ``detect``; an empty value means no GPU."""
    if cuda_visible is not None:
        devices = [d.strip() for d in cuda_visible.split(",") if d.strip()]
    else:
        devices = detect()
    return [(f"gpu{d}", {"CUDA_VISIBLE_DEVICES": d}) for d in devices] or [
        ("cpu", {"CUDA_VISIBLE_DEVICES": ""})
    ]


def main() -> int:
    plans = worker_plans(os.environ.get("CUDA_VISIBLE_DEVICES"), visible_cuda_devices)
    procs = [
        subprocess.Popen(worker_command(name), env={**os.environ, **env}) for name, env in plans
    ]

    def stop(signum: int, _frame: object) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parent = os.getppid()
    follow_parent = os.environ.get("QS_WORKER_EXIT_WITH_PARENT") == "1"
    while any(p.poll() is None for p in procs):
        if follow_parent and os.getppid() != parent:  # the embedded server died: stop too
            stop(signal.SIGTERM, None)
            follow_parent = False
        time.sleep(1)
    return max(p.returncode or 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main())
