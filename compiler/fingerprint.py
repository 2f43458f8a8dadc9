"""Device fingerprint: what a latency measurement depends on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve",
)

LIBRARIES = ("torch", "onnx", "onnxruntime", "openvino", "apache-tvm", "onnx-neural-compressor", "numpy")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def isa_flags() -> list[str]:
    """The ISA extensions relevant to quantized kernels that this CPU reports."""
    _, flags = _cpuinfo()
    return sorted(f for f in ISA_FLAGS if f in flags)


def cpu_flags() -> set[str]:
    """Every ISA flag this CPU reports (empty when /proc/cpuinfo is unreadable)."""
    return _cpuinfo()[1]


def has_vnni() -> bool:
    """True when the CPU has an INT8 dot-product instruction (AVX512-VNNI, AVX-VNNI, AMX or Arm dot)."""
    flags = set(isa_flags())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _governor() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def _frequency_khz() -> dict[str, int] | None:
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    out = {}
    for name in ("scaling_min_freq", "scaling_max_freq", "cpuinfo_max_freq"):
        try:
            out[name] = int((base / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return out or None


def device_fingerprint(threads: int) -> dict[str, Any]:
    """CPU model, ISA flags, logical cores, threads used, governor and library versions."""
    model, _ = _cpuinfo()
    return {
        "cpu_model": model,
        "machine": platform.machine(),
        "isa": isa_flags(),
        "vnni": has_vnni(),
        "logical_cores": os.cpu_count(),
        "threads": threads,
        "governor": _governor(),
        "frequency_khz": _frequency_khz(),
        "os": platform.system(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def same_device(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Fields on which two fingerprints disagree in a way that changes latency (empty if compatible)."""
    fields = ("cpu_model", "machine", "isa", "threads")
    diffs = [f for f in fields if a.get(f) != b.get(f)]
    # the runtime and, for compiled or simulated targets, what was compiled for / simulated
    for f in ("backend", "tvm_target", "accelerator"):
        if (f in a or f in b) and a.get(f) != b.get(f):
            diffs.append(f)
    return diffs
