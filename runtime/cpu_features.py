"""The CPU instruction-set features the CPU precisions depend on, read from ``/proc/cpuinfo`` (Linux).

  avx2, avx512f        fp32 GEMM width (onnxruntime / OpenVINO pick their kernels by these)
  avx512_vnni, avx_vnni  int8 dot products (u8 x s8 -> s32); without them int8 GEMMs emulate the pair sums
  avx512_bf16          bf16 dot products with fp32 accumulation (Cooper Lake, Zen 4 and later)
  amx_bf16, amx_int8   Intel AMX tile matrix units (Sapphire Rapids and later)
  avx_ne_convert       bf16 <-> fp32 conversions on AVX2-only cores (OpenVINO's "avx2_vnni_2" bf16 path)
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                     "avx_ne_convert")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "avx_ne_convert")  # any one: the CPU computes bf16 in hardware


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The first processor's ``flags`` from ``/proc/cpuinfo``; None where that file is not there (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The first processor's ``model name`` ('' when unknown)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return ""


def features(flags: set[str] | None = None) -> dict[str, bool | None]:
    """``FLAGS_THAT_MATTER`` -> present (None for each when the flags cannot be read)."""
    flags = cpu_flags() if flags is None else flags
    return {f: (None if flags is None else f in flags) for f in FLAGS_THAT_MATTER}


def describe(flags: set[str] | None = None) -> str:
    """One line: the CPU model and which of ``FLAGS_THAT_MATTER`` it has, e.g. 'AMD EPYC: avx2 yes, avx512f no,
    ...' (from /proc/cpuinfo)."""
    feats = features(flags)
    if all(v is None for v in feats.values()):
        return "CPU flags unknown (no /proc/cpuinfo)"
    listed = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in feats.items())
    return f"{cpu_model() or 'CPU'}: {listed} (/proc/cpuinfo)"
