"""How many CPUs this process may really use: the least of its cgroup CPU quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us`), its CPU affinity and the machine's cores.

In a container `os.cpu_count()` is the node's cores, not the pod's limit: a worker limited to 2 CPUs
on a 64-core node would start 64 OpenMP threads per run and spend its quota being throttled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(mount: Path, inner: str) -> list[Path]:
    """`mount/inner` and each directory above it up to the mount (a container without a cgroup
    namespace sees its host path in /proc, while its own cgroup is mounted at the root)."""
    path = mount / inner.lstrip("/")
    found = [path, *path.parents]
    return [p for p in found if p == mount or mount in p.parents]


def _v2_quota(root: Path, inner: str) -> float | None:
    """The tightest `cpu.max` (quota / period) on the way up from the process's cgroup."""
    quotas = []
    for directory in _ancestors(root, inner):
        text = _read(directory / "cpu.max")
        if text and not text.startswith("max"):
            quota, _, period = text.partition(" ")
            if quota.isdigit() and period.isdigit() and int(period) > 0:
                quotas.append(int(quota) / int(period))
    return min(quotas, default=None)


def _v1_quota(root: Path, controllers: str, inner: str) -> float | None:
    """The tightest `cpu.cfs_quota_us / cpu.cfs_period_us` (-1: none) of the cpu hierarchy."""
    quotas = []
    for name in {controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"}:
        mount = root / name
        for directory in _ancestors(mount, inner):
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
            if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
                quotas.append(int(quota) / int(period))
    return min(quotas, default=None)


def cgroup_quota(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroups, in CPUs; None when there is none."""
    text = _read(membership) or ""
    quotas = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, inner = rest.partition(":")
        if hierarchy == "0" and not controllers:
            found = _v2_quota(root / "unified", inner) or _v2_quota(root, inner)
        elif "cpu" in controllers.split(","):
            found = _v1_quota(root, controllers, inner)
        else:
            continue
        if found is not None:
            quotas.append(found)
    return min(quotas, default=None)


def available_cpus() -> int:
    """CPUs this process may use: quota (rounded down, at least 1), affinity, then cores."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    quota = cgroup_quota()
    if quota is not None:
        counts.append(max(1, math.floor(quota)))
    return max(1, min(counts))
