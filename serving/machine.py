"""Which machine an engine timing was taken on, so `engine: auto` trusts only timings from its own kind."""

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CGROUP = Path("/sys/fs/cgroup")
# The instruction sets that decide which engine or precision wins: int8 dot products, bf16, AMX tiles.
TELLING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo_field(text: str, key: str) -> str:
    """The first `key : value` line of /proc/cpuinfo ('' when absent, as on macOS or arm64 without it)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def cpu_limit(cgroup: Path = CGROUP) -> float | None:
    """The container's CPU quota in cores (a Kubernetes `limits.cpu`), cgroup v2 or v1; None when unlimited."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return round(int(quota) / int(period), 2)


def this_machine() -> dict:
    """CPU model, the CPUs this process may run on (and its container's CPU quota), architecture and the telling ISA
    flags: equal dicts, same kind."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags = set(_cpuinfo_field(text, "flags").split())
    return {"cpu": _cpuinfo_field(text, "model name") or platform.processor() or "unknown",
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
            "cpu_limit": cpu_limit(),
            "arch": platform.machine(),
            "flags": [flag for flag in TELLING_FLAGS if flag in flags]}
