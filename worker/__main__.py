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


def main() -> int:
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (
        [d for d in gpus.split(",") if d.strip()] if gpus is not None else visible_cuda_devices()
    )
    plans = [(f"gpu{d}", {"CUDA_VISIBLE_DEVICES": d}) for d in devices] or [
        ("cpu", {"CUDA_VISIBLE_DEVICES": ""})
    ]
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
