"""How busy this machine is: CPUs free for a run, and CPUs other processes used while something was measured.

Linux reads /proc/stat (the whole machine's CPU time); elsewhere the 1-minute load average stands in."""
from __future__ import annotations

import os
import resource
import time

BUSY_SHARE = 0.2   # other processes using more than this share of the CPUs make a timing unreliable


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (first line of /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    total = sum(values[:8])                                     # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def free_cpus(sample_s: float = 0.2) -> float:
    """CPUs not used by other work right now: the machine's idle share over `sample_s` seconds (while this
    process waits), at most the CPUs this process may use; else cpus() - 1-minute load average."""
    before = machine_cpu_seconds()
    if before is not None:
        time.sleep(sample_s)
        after = machine_cpu_seconds()
        busy, total = after[0] - before[0], after[1] - before[1]
        if total > 0:
            return min(cpus(), (os.cpu_count() or cpus()) * (1 - busy / total))
    try:
        return max(0.0, cpus() - os.getloadavg()[0])
    except OSError:
        return float(cpus())


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have finished."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """`with OtherLoad() as load: ...` -> load.cpus: CPUs that OTHER processes kept busy, on average, while the
    block ran (the machine's busy CPU time minus this process's and its finished children's, per wall second);
    load.busy: more than BUSY_SHARE of this machine's CPUs. None where /proc/stat cannot be read (then the
    1-minute load average at the end, minus nothing: an upper bound)."""

    cpus: float | None = None
    busy: bool | None = None

    def __enter__(self):
        self._start = (time.perf_counter(), machine_cpu_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._start[0]
        machine = machine_cpu_seconds()
        if machine is not None and self._start[1] is not None and wall > 0:
            other = (machine[0] - self._start[1][0]) - (own_cpu_seconds() - self._start[2])
            self.cpus = max(0.0, other / wall)
        else:
            try:
                self.cpus = os.getloadavg()[0]
            except OSError:
                return
        self.busy = self.cpus > BUSY_SHARE * (os.cpu_count() or cpus())
