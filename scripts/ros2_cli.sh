#!/usr/bin/env bash
# Puts `ros2 launch` and the `ros2` command line (topic, param, node, lifecycle, service,
# interface, pkg, run) into .venv, for test/ros/test_launch.py and for users of the PyPI wheels
# of ROS 2, which have none: from their ROS 2 Jazzy sources in $ROS2_CLI_SRC (default
# ../shared/ros2-cli-src, whose install.sh this runs), with composition_interfaces (which
# launch_ros imports) built into build/ros2-cli. Then `. build/ros2-cli/install/setup.bash`.
#
# First it rewrites the wheels' CMake files once (scripts/fix_ros_wheels.py: they name the
# include folders of the machine that built them), which colcon builds need. Then it does
# nothing more where the tools are installed already or where the sources are not there (the
# launch tests then skip, or fail under CI=true). Run from anywhere, after .venv has
# '.[ros-build]'.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${ROS2_CLI_SRC:-../shared/ros2-cli-src}
.venv/bin/python scripts/fix_ros_wheels.py
if .venv/bin/python -c "import importlib.util as u, sys
sys.exit(not (u.find_spec('launch_ros') and u.find_spec('ros2launch')))" \
    && [ -f build/ros2-cli/install/setup.bash ]; then
  echo "ros2 command line: already in .venv"
  exit 0
fi
if [ ! -x "$SRC/install.sh" ]; then
  echo "ros2 command line: no sources at $SRC (set ROS2_CLI_SRC); not installed"
  exit 0
fi
# shellcheck disable=SC1091
. .venv/bin/activate
"$SRC/install.sh" build/ros2-cli
