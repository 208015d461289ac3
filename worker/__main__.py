"""``python -m worker``: one Celery worker process per visible CUDA device, or one CPU worker.

Each GPU worker is pinned with CUDA_VISIBLE_DEVICES and runs one job at a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

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
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
