"""Make the ROS 2 Jazzy PyPI wheels in this venv usable by CMake (colcon build of .msg packages).

The wheels' CMake export files carry the include directories of the machine that built them
(/opt/python/cp311-cp311/include/python3.11 and its numpy include directory); CMake refuses an
imported target whose include directory does not exist. This rewrites them once to this
interpreter's directories. Idempotent; prints how many files it changed.

    .venv/bin/python scripts/fix_ros_wheels.py
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

BUILD_PREFIX = "/opt/python/cp311-cp311"
_NUMPY_INCLUDE = re.compile(
    re.escape(BUILD_PREFIX) + r"/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include"
)
_PYTHON_INCLUDE = re.compile(re.escape(BUILD_PREFIX) + r"/include/python3\.\d+")


def fix_exports(prefix: Path) -> list[Path]:
    """Rewrite the build machine's include paths in `prefix`/share/**/*.cmake; returns the
    files changed."""
    import numpy

    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = []
    for path in sorted((prefix / "share").rglob("*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if BUILD_PREFIX not in text:
            continue
        new = _NUMPY_INCLUDE.sub(numpy_include, text)
        new = _PYTHON_INCLUDE.sub(python_include, new)
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed.append(path)
    return changed


def main() -> int:
    prefix = Path(sys.prefix)
    changed = fix_exports(prefix)
    print(f"fix_ros_wheels: {len(changed)} CMake export files rewritten under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
