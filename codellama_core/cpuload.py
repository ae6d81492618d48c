"""How much CPU other processes use right now, and how many llama.cpp threads fit beside them.

In: the kernel's CPU counters (Linux ``/proc/stat``: busy time of the CPUs this process may run on) and this
process's own CPU time (``os.times``), sampled by a daemon thread every ``PERIOD_S``. Out: ``OtherLoad.cores()``, the CPUs (of ours) that
other processes kept busy over the last ``WINDOW_S`` (a float; steal time of a virtual machine counts as busy), and
``threads_beside(others, most)``, the thread count for the next request.

Why: llama-cpp-python's llama.cpp is built with OpenMP, whose threads spin at every barrier (dozens per token).
On an idle machine spinning is the fastest wait there is; when other processes hold the cores, a barrier waits for
a thread the kernel took off its core while its partner burns the time slice, and generation gets 5-20x slower
(docs/benchmarks.md, "A busy machine"). A passive wait policy fixes the busy case but costs 1.5-1.8x idle. With
as many threads as there are cores left over, the barriers have no descheduled partner to wait for, idle keeps
libgomp's spinning, and a busy machine runs on the cores it has (one thread: no barrier at all).

llama.cpp's arithmetic depends on the thread count (the last bits of the logits, enough to change a greedy pick
between two near-equal tokens), so output compared token by token across runs needs a fixed count: ``--threads``,
or ``CODELLAMA_ADAPTIVE_THREADS=0`` in the environment (the test suite sets it; the tests of this module unset it).

Where ``/proc/stat`` cannot be read (macOS, Windows), the one-minute load average minus this process's own CPU
use stands in: slower to notice a change, never wrong for long.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time

PERIOD_S = 0.25  # a sample every quarter second (two small file reads)
WINDOW_S = 1.0  # the load of the last second decides: a build that starts is seen within a keystroke or two
FREE_MIN = 0.5  # a core counts as free for a thread when at most half of it is taken by others


def adaptive() -> bool:
    """Whether the thread count may follow the load (``CODELLAMA_ADAPTIVE_THREADS=0`` turns it off)."""
    return os.environ.get("CODELLAMA_ADAPTIVE_THREADS", "1").strip().lower() not in ("0", "false", "no", "off")


def cpus() -> set[int] | None:
    """The CPUs this process may run on (a container's cpuset, ``taskset``), or None where that cannot be asked."""
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _machine_busy_s(cpus: set[int] | None = None) -> float | None:
    """Seconds of CPU time spent busy since boot, on ``cpus`` (None: the machine); None where /proc/stat is missing.
    Counting only our own CPUs keeps a container's cpuset (2 CPUs of a 64-CPU host) from reading the host as idle."""
    try:
        with open("/proc/stat", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = 0
    seen = False
    for line in lines:
        if not line.startswith(b"cpu"):
            continue
        fields = line.split()
        name = fields[0][3:]
        if cpus is None and name:
            continue  # the machine: the first line's totals
        if cpus is not None and (not name or int(name) not in cpus):
            continue
        ticks = [int(x) for x in fields[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user/nice
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        busy += sum(ticks[:8]) - idle
        seen = True
    return busy / _CLK_TCK if seen else None


_CLK_TCK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


def threads_beside(others: float, most: int, cores: int) -> int:
    """Threads for llama.cpp when other processes keep ``others`` CPUs busy: the cores left over (a core at least
    half free counts), at most ``most`` (the configured count), at least one."""
    free = cores - others
    return max(1, min(most, int(free + (1.0 - FREE_MIN))))


class OtherLoad:
    """CPUs kept busy by other processes over the last second, sampled in the background (``start``/``stop``)."""

    def __init__(self, period_s: float = PERIOD_S, window_s: float = WINDOW_S) -> None:
        self.period_s, self.window_s = period_s, window_s
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque(
            maxlen=max(2, int(window_s / period_s) + 1)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpus = cpus()
        self.available = _machine_busy_s(self.cpus) is not None

    def start(self) -> OtherLoad:
        if self._thread is None:
            self._sample()
            self._thread = threading.Thread(target=self._run, name="cpu-load", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def _sample(self) -> None:
        busy = _machine_busy_s(self.cpus)
        if busy is None:
            return
        with self._lock:
            self._samples.append((time.monotonic(), busy, _own_s()))

    def cores(self, wait_s: float = 0.0) -> float:
        """CPUs other processes kept busy over the last ``window_s`` (0.0 until two samples exist; with ``wait_s``, a
        sampler just started takes a second sample that long after its first instead: a start-up's first reading)."""
        if not self.available:
            return self._load_average()
        if wait_s > 0:
            with self._lock:
                first = self._samples[0][0] if len(self._samples) == 1 else None
            if first is not None:
                time.sleep(max(0.0, first + wait_s - time.monotonic()))
                self._sample()
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (t0, busy0, own0), (t1, busy1, own1) = self._samples[0], self._samples[-1]
        wall = t1 - t0
        if wall <= 0:
            return 0.0
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)

    def _load_average(self) -> float:
        with contextlib.suppress(OSError, AttributeError):
            # the load average counts our own threads too; take off what this process used lately
            now, own = time.monotonic(), _own_s()
            last = getattr(self, "_last_own", None)
            self._last_own = (now, own)
            mine = (own - last[1]) / (now - last[0]) if last and now > last[0] else 0.0
            return max(0.0, os.getloadavg()[0] - mine)
        return 0.0
