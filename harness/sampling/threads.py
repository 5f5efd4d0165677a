"""How many threads the CPU backends compute with: the cores that are free, re-checked as a run goes.

torch's OpenMP threads meet at a barrier after every parallel operation (hundreds per decode step). When
another process holds one of the cores, the thread that shares a core with it reaches each barrier a
scheduler timeslice late and the others wait for it: the fast sampler with 2 threads on 2 cores ran ~8x
slower beside two CPU-bound jobs (161 samples in 6 min against 1,024 in 8 min alone). One thread per
*free* core has no such stall, so a competing process costs about its share of the CPU.

A core's load is measured, not guessed: over a window, the busy time of the CPUs this process may run on
(/proc/stat) minus this process's own CPU time (which includes its threads' spin-waiting) is what others
used. `backend.num_threads` set explicitly turns all of this off.

OMP_WAIT_POLICY=PASSIVE (threads sleep at once at a barrier instead of spinning) is not set here: libgomp
reads it once, when torch is first imported, which is before this module in every entry point, and its
cost on an idle machine (a futex wake per parallel region) is unmeasured.
"""
from __future__ import annotations

import os
import time

RECHECK_SECONDS = 2.0  # how often a run re-measures (a window long enough to average a scheduler's slices)
PROBE_SECONDS = 0.1  # the first measurement, while this process is idle
MIN_SHARE = 0.6  # of a core busy with others' work before this process gives that core up
clock, sleep = time.perf_counter, time.sleep  # module attributes, so tests can drive them


def _cpu_busy_seconds(cpus: set[int]) -> float | None:
    """Seconds the given CPUs spent not idle since boot, or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        # user nice system idle iowait irq softirq steal ...: idle and iowait are the idle time
        busy += sum(fields[:8]) - fields[3] - fields[4]
    return busy / tick


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def available_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


class CoreShare:
    """The thread count for this process: `fixed` if given, else one per core not busy with others' work.

    `start()` measures over a short idle probe and sets torch's threads; `tick()` (cheap; call it once
    per decode step or batch) re-measures every RECHECK_SECONDS and changes the count when the free
    cores changed. The count never exceeds `OMP_NUM_THREADS` when that is set.
    """

    def __init__(self, fixed: int | None = None):
        self.fixed = int(fixed) if fixed else None
        self.cpus = available_cpus()
        limit = os.environ.get("OMP_NUM_THREADS", "")
        self.most = max(1, min(len(self.cpus), int(limit) if limit.isdigit() and int(limit) > 0 else len(self.cpus)))
        self.threads = self.fixed or self.most
        self.changes: list[tuple[float, int]] = []  # (time, threads) at each change, for benches and logs
        self._mark: tuple[float, float, float] | None = None

    def start(self) -> int:
        """Call at the start of each `sample` call: the first probes (PROBE_SECONDS), later ones only
        re-measure when the window since the last measurement is long enough, so many small calls cost nothing."""
        if self.fixed:
            self._apply(self.fixed)
            return self.fixed
        if self._mark is not None and self._mark[1] is not None:
            self.tick()
            self._apply(self.threads)  # the process-wide count may have been changed since (by training)
            return self.threads
        self._mark = self._now()
        if self._mark[1] is not None:
            sleep(PROBE_SECONDS)
            self._measure()
        else:
            self._apply(self.most)
        return self.threads

    def tick(self) -> None:
        if self.fixed or self._mark is None or self._mark[1] is None:
            return
        if clock() - self._mark[0] >= RECHECK_SECONDS:
            self._measure()

    def _now(self) -> tuple[float, float | None, float]:
        return clock(), _cpu_busy_seconds(self.cpus), _own_cpu_seconds()

    def _measure(self) -> None:
        (w0, b0, o0), now = self._mark, self._now()
        w1, b1, o1 = now
        self._mark = now
        if b1 is None or w1 <= w0:
            return
        others = max(0.0, (b1 - b0) - (o1 - o0)) / (w1 - w0)  # cores' worth of others' work
        free = len(self.cpus) - int(others + (1 - MIN_SHARE))
        self._apply(max(1, min(self.most, free)))

    def _apply(self, threads: int) -> None:
        import torch

        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.changes.append((time.time(), threads))
        self.threads = threads
