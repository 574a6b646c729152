"""How many CPU cores this process can really use: what torch's thread count should be capped at.

torch defaults to one thread per logical CPU. On a 2-vCPU cloud machine those are often the two
hyperthreads of one physical core, and a CPU quota (cgroup) can allow fewer cores than the machine
shows; more threads than cores only contend. This counts physical cores among the CPUs this process
may run on (Linux sysfs), within its cgroup v2 quota; elsewhere it falls back to os.cpu_count().
"""

from __future__ import annotations

import functools
import math
import os
import pathlib

SYSFS = pathlib.Path("/sys/devices/system/cpu")
CGROUP = pathlib.Path("/sys/fs/cgroup/cpu.max")


@functools.cache  # the topology and quota do not change under a running process: read sysfs once
def usable_cores(*, sysfs: pathlib.Path = SYSFS, cgroup: pathlib.Path = CGROUP) -> int:
    """Physical cores among this process's allowed CPUs, capped by its CPU quota; at least 1."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = physical_cores(cpus, sysfs=sysfs) or len(cpus)
    quota = cpu_quota(cgroup)
    return max(1, min(cores, quota) if quota else cores)


def physical_cores(cpus: list[int], *, sysfs: pathlib.Path = SYSFS) -> int | None:
    """Distinct (package, core) pairs of `cpus`, or None where sysfs does not say."""
    found = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            found.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(found) or None


def cpu_quota(cgroup: pathlib.Path = CGROUP) -> int | None:
    """Whole CPUs the cgroup v2 quota allows (rounded up), or None when there is no quota."""
    try:
        limit, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return max(1, math.ceil(int(limit) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None
