"""What this machine's CPU is: its model name and the instruction sets that decide which backend
and precision run fast (a speed figure without them cannot be checked on another machine).

On the CPUs measured for this package, OpenVINO bf16 was 0.36x torch eager's time on an Intel
Xeon with AMX and 0.42x on an AMD EPYC with AVX512-BF16 but no AMX: the same command, a
different figure. Every benchmark's JSON and every speed table therefore names `describe()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Instruction sets that change which path is fastest, by the name a reader knows them by, and
# the /proc/cpuinfo flags that show each (any one of them suffices).
FEATURES: dict[str, tuple[str, ...]] = {
    "AMX": ("amx_tile", "amx_bf16", "amx_int8"),
    "AVX512-BF16": ("avx512_bf16",),
    "VNNI": ("avx512_vnni", "avx_vnni"),
    "AVX512": ("avx512f",),
    "AVX2": ("avx2",),
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which of `FEATURES` it has."""

    model: str
    features: tuple[str, ...] = field(default_factory=tuple)

    def has(self, feature: str) -> bool:
        """Whether the CPU has `feature` (a key of `FEATURES`)."""
        if feature not in FEATURES:
            raise ValueError(f"unknown CPU feature {feature!r}: one of {', '.join(FEATURES)}")
        return feature in self.features

    def describe(self) -> str:
        """'Intel(R) Xeon(R) Processor (AMX, AVX512-BF16, VNNI, AVX512, AVX2)'; the model alone
        when none of `FEATURES` is known."""
        return f"{self.model} ({', '.join(self.features)})" if self.features else self.model

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "features": list(self.features),
                "description": self.describe()}


def cpu_info(cpuinfo: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU, read from /proc/cpuinfo (elsewhere: the platform's processor name and
    no features known)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        import platform

        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU")
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (its first processor's fields)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: the rest repeat it
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    model = fields.get("model name") or fields.get("Model name") or fields.get("CPU part")
    features = tuple(name for name, shown_by in FEATURES.items() if flags & set(shown_by))
    return CpuInfo(model or "unknown CPU", features)
