"""Which machine an engine timing was taken on, so `engine: auto` trusts only timings from its own kind."""

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The instruction sets that decide which engine or precision wins: int8 dot products, bf16, AMX tiles.
TELLING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo_field(text: str, key: str) -> str:
    """The first `key : value` line of /proc/cpuinfo ('' when absent, as on macOS or arm64 without it)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def this_machine() -> dict:
    """CPU model, the CPUs this process may run on, architecture and the telling ISA flags: equal dicts, same kind."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags = set(_cpuinfo_field(text, "flags").split())
    return {"cpu": _cpuinfo_field(text, "model name") or platform.processor() or "unknown",
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
            "arch": platform.machine(),
            "flags": [flag for flag in TELLING_FLAGS if flag in flags]}
