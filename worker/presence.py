"""A worker process reports its device and the device's memory, for the API's memory admission.

One ``worker_device`` row per process (host, pid), written when the process starts and refreshed
every ``QS_WORKER_REPORT_S`` seconds by a daemon thread; removed when the process stops. A row
the API finds too old belongs to a worker that died without removing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import socket
import threading

import torch
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from api.db import session_scope
from api.models import WorkerDevice, utcnow

log = logging.getLogger(__name__)


def device_memory(device: torch.device) -> tuple[str, int]:
    """(name, bytes) of the memory jobs on ``device`` can use: the GPU's total memory, or the
    host's physical memory capped by this process's cgroup limit on the CPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.name, int(props.total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:  # cgroup v2; "max" = no limit
            limit = f.read().strip()
        if limit != "max":
            total = min(total, int(limit))
    return _cpu_name(), int(total)


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()[:255]
    return platform.processor() or "CPU"


class Presence(threading.Thread):
    """Writes this process's row now and every ``every`` seconds until :meth:`stop`."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        device: torch.device,
        every: float,
        cap: int | None = None,
    ) -> None:
        super().__init__(name="worker-presence", daemon=True)
        self.factory, self.every = factory, every
        self.host, self.pid = socket.gethostname()[:255], os.getpid()
        self.device = device
        self.device_name, self.memory_bytes = device_memory(device)
        if cap is not None:  # QS_WORKER_MEMORY_BYTES: the operator keeps the rest
            self.memory_bytes = min(self.memory_bytes, cap)
        self._stopping = threading.Event()

    def report(self) -> None:
        with session_scope(self.factory) as s:
            row = s.scalar(
                select(WorkerDevice).where(
                    WorkerDevice.host == self.host, WorkerDevice.pid == self.pid
                )
            )
            if row is None:
                s.add(
                    WorkerDevice(
                        host=self.host,
                        pid=self.pid,
                        device=str(self.device),
                        device_name=self.device_name,
                        memory_bytes=self.memory_bytes,
                    )
                )
            else:
                row.seen_at = utcnow()

    def run(self) -> None:
        while not self._stopping.wait(self.every):
            try:
                self.report()
            except Exception:  # the database is away: the next report retries
                log.warning("could not report this worker's device", exc_info=True)

    def start(self) -> None:
        try:
            self.report()
        except Exception:
            log.warning("could not report this worker's device", exc_info=True)
        super().start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(Exception):
            with session_scope(self.factory) as s:
                s.execute(
                    delete(WorkerDevice).where(
                        WorkerDevice.host == self.host, WorkerDevice.pid == self.pid
                    )
                )
