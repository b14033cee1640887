"""ament_python package that is also pip-installable (`pip install -e .[test]`)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "accel_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Accel video semantic segmentation (CVPR 2019) as a ROS 2 perception package",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["weights/*.pt"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/msg", glob("msg/*.msg")),
    ],
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "opencv-python-headless",
        "rosbags>=0.10",
        "mcap>=1.1",  # streams MCAP records without the summary: recovers truncated bags
        "tqdm",
        "pyyaml",
        "matplotlib",
        "setuptools",
    ],
    extras_require={"test": ["pytest", "ruff"]},
    zip_safe=False,
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "accel-ros = accel_ros.tools.cli:main",
            "accel_segmentation_node = accel_ros.node:main",
        ],
    },
)
