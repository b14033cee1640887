"""The CPU description every speed figure carries (accel_ros.machine)."""

from __future__ import annotations

import pytest

from accel_ros.machine import CpuInfo, cpu_info, parse_cpuinfo

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16
"""


def test_features_read_from_cpuinfo() -> None:
    xeon = parse_cpuinfo(XEON)
    assert xeon == CpuInfo("Intel(R) Xeon(R) Platinum 8480+",
                           ("AMX", "AVX512-BF16", "VNNI", "AVX512", "AVX2"))
    epyc = parse_cpuinfo(EPYC)
    assert epyc.has("AVX512-BF16") and not epyc.has("AMX")
    assert epyc.describe() == "AMD EPYC 9654 96-Core Processor (AVX512-BF16, VNNI, AVX512, AVX2)"
    assert parse_cpuinfo("").describe() == "unknown CPU"
    with pytest.raises(ValueError, match="unknown CPU feature 'AMX2'"):
        xeon.has("AMX2")


def test_this_machine_has_a_name(tmp_path) -> None:
    assert cpu_info().model
    assert cpu_info(tmp_path / "missing").features == ()
    assert set(cpu_info().to_dict()) == {"model", "features", "description"}
