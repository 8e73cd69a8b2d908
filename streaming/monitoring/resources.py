"""Resource use of the running process: CPU, memory, network and GPU.

``ResourceSampler.sample_once`` reads psutil (and torch.cuda when a GPU is
present) and writes gauges and counters through ``Telemetry``. ``start``
runs it every ``interval_s`` on a named background thread.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from streaming.monitoring.catalogue import (
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    GPU_UTILIZATION,
    NETWORK_RECEIVED,
    NETWORK_SENT,
    PROCESS_CPU_UTILIZATION,
    PROCESS_MEMORY_RSS,
    PROCESS_MEMORY_UTILIZATION,
)
from streaming.monitoring.telemetry import Telemetry

logger = logging.getLogger(__name__)

# cgroup v2 and v1 files that hold a container's memory limit.
_CGROUP_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
# cgroup v1 writes a huge number when no limit is set.
_NO_LIMIT_ABOVE_BYTES = 1 << 60


@dataclass(frozen=True)
class ResourceSamplerConfig:
    """How often to sample, and whether to look for a GPU."""

    interval_s: float = 10.0
    sample_gpu: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.interval_s < math.inf:
            raise ValueError(
                f"interval_s must be a finite number > 0, got {self.interval_s}"
            )


def memory_limit_bytes() -> int:
    """Return the memory limit of this process: the cgroup limit when one is
    set, else the machine's physical memory."""
    for path in _CGROUP_LIMIT_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT_ABOVE_BYTES:
            return int(text)
    return int(psutil.virtual_memory().total)


class ResourceSampler:
    """Write the process's resource use to telemetry, now or periodically.

    CPU utilisation is the process's CPU time over the wall-clock time since
    the previous sample, so the first sample only sets the baseline. Network
    bytes are host-wide (psutil has no per-process counters), counted from
    the sampler's creation.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        config: ResourceSamplerConfig | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.config = config or ResourceSamplerConfig()
        self._process = psutil.Process()
        self._memory_limit_bytes = memory_limit_bytes()
        self._last_cpu_s: float | None = None
        self._last_time_s = 0.0
        network = psutil.net_io_counters()
        self._last_sent = int(network.bytes_sent)
        self._last_received = int(network.bytes_recv)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        """Read resource use now and write it."""
        self._sample_cpu()
        rss = int(self._process.memory_info().rss)
        self.telemetry.set(PROCESS_MEMORY_RSS, rss)
        self.telemetry.set(PROCESS_MEMORY_UTILIZATION, rss / self._memory_limit_bytes)
        self._sample_network()
        if self.config.sample_gpu:
            self._sample_gpu()

    def start(self) -> None:
        """Sample every ``interval_s`` on a background thread until ``stop``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="streamlearn-resource-sampler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except (psutil.Error, OSError) as error:
                logger.warning("resource sample failed: %s", error)
            self._stop.wait(self.config.interval_s)

    def _sample_cpu(self) -> None:
        times = self._process.cpu_times()
        cpu_s = float(times.user + times.system)
        now = self.telemetry.clock()
        if self._last_cpu_s is not None and now > self._last_time_s:
            utilization = (cpu_s - self._last_cpu_s) / (now - self._last_time_s)
            self.telemetry.set(PROCESS_CPU_UTILIZATION, utilization)
        self._last_cpu_s, self._last_time_s = cpu_s, now

    def _sample_network(self) -> None:
        network = psutil.net_io_counters()
        sent, received = int(network.bytes_sent), int(network.bytes_recv)
        # Host counters can wrap or reset when an interface goes away. A
        # negative difference is skipped rather than written as a decrease.
        self.telemetry.count(NETWORK_SENT, max(0, sent - self._last_sent))
        self.telemetry.count(NETWORK_RECEIVED, max(0, received - self._last_received))
        self._last_sent, self._last_received = sent, received

    def _sample_gpu(self) -> None:
        # torch is imported only when the job already has it loaded, so
        # sampling never pays for importing it.
        torch: Any = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            device = str(index)
            self.telemetry.set(
                GPU_MEMORY_ALLOCATED, torch.cuda.memory_allocated(index), device=device
            )
            self.telemetry.set(
                GPU_MEMORY_RESERVED, torch.cuda.memory_reserved(index), device=device
            )
            try:
                percent = torch.cuda.utilization(index)
            except Exception as error:
                # torch reads utilisation through NVML: without nvidia-ml-py it
                # raises ModuleNotFoundError, and NVML raises its own error
                # classes. Memory is still sampled.
                logger.debug("GPU utilisation unavailable: %s", error)
                continue
            self.telemetry.set(GPU_UTILIZATION, percent / 100.0, device=device)
