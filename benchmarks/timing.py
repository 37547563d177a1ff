"""Shared timing and memory helpers: median of N runs after warm-up, interleaved comparisons, peak memory."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """Wall-clock seconds of the timed runs of one thing (warm-up runs excluded)."""

    runs: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # what each timed run returned, for checks

    @property
    def result(self) -> Any:
        """What the last timed run returned."""
        return self.results[-1] if self.results else None

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def max(self) -> float:
        return max(self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "runs": len(self.runs),
                "runs_s": [round(run, 6) for run in self.runs]}


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(fn: Callable[[], Any], *, repeats: int, warmup: int = 1, **options: Any) -> Measurement:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (see ``measure_interleaved``)."""
    return measure_interleaved({"fn": fn}, repeats=repeats, warmup=warmup, **options)["fn"]


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1,
                        keep_results: bool = True, budget_s: float | None = None,
                        min_repeats: int = 1) -> dict[str, Measurement]:
    """Time several alternatives round-robin (a, b, c, a, b, c, ...) so drifting load hits all alike.

    A function may return a ``Timed`` to report its own inner timing (e.g. a loop without its
    set-up); otherwise the whole call is timed. With ``budget_s``, no new round starts once that
    many seconds have passed (warm-up included) and ``min_repeats`` rounds are done, so a heavily
    loaded machine gives fewer runs (each figure reports how many) instead of an endless benchmark.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    results = {name: Measurement() for name in fns}
    for done in range(repeats):
        if budget_s is not None and done >= min_repeats and time.perf_counter() - start > budget_s:
            break
        for name, fn in fns.items():
            seconds, result = _timed(fn)
            if isinstance(result, Timed):
                seconds, result = result.seconds, result.result
            results[name].runs.append(seconds)
            if not keep_results:  # large results (e.g. frames): keep the last one only
                results[name].results = [None] * len(results[name].results)
            results[name].results.append(result)
    return results


@dataclass
class Timed:
    """Returned by a benchmarked function that times its own inner part."""

    seconds: float
    result: Any = None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op threads in torch, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak on a GPU, sampled process RSS on a CPU.

    ``peak_mb`` is the highest value seen; ``increase_mb`` is that minus the value at entry,
    i.e. what the block itself needed on top of what the process already held.
    """

    def __init__(self, device: str = "cpu", interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def increase_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)

    @property
    def kind(self) -> str:
        return "CUDA max_memory_allocated" if self.device == "cuda" else "process RSS (sampled every 5 ms)"

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = self.peak_mb = torch.cuda.memory_allocated() / 2**20
            return self
        self.start_mb = self.peak_mb = _rss_bytes() / 2**20
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, _rss_bytes() / 2**20)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_bytes() / 2**20)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    # cv2 before decord: once decord's bundled libraries are loaded first, OpenCV's VP9 (.webm) writer
    # fails with "libvpx ABI version mismatch" in this process.
    import cv2  # noqa: F401

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        pass
    for package in ("cv2", "decord", "diffusers", "kedro"):
        try:
            module = __import__(package)
            info[package] = getattr(module, "__version__", "?")
        except ImportError:  # pragma: no cover
            info[package] = None
    return info
