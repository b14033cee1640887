"""Launch the Accel segmentation node, optionally with rviz2.

    ros2 launch accel_ros accel.launch.py image_topic:=/camera/image_raw device:=cuda:0
    ros2 launch accel_ros accel.launch.py params_file:=/path/my.yaml use_rviz:=false
    ros2 launch accel_ros accel.launch.py image_topics:=front/image,left/image,right/image

Every argument except `params_file` and `use_rviz` is the node parameter of the same name
(NODE_PARAMETERS); an empty value keeps the parameters file's. Not run here: launch_ros has no
PyPI wheel (the node itself is started by its console script in the tests).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "accel_ros"
# Launch arguments passed to the node as parameters of the same name: (name, default, help).
NODE_PARAMETERS = (
    ("image_topic", "/camera/image_raw", "sensor_msgs/Image topic to segment"),
    ("image_topics", "", "several cameras in one node, comma-separated (front/image,left/image); "
     "outputs under ~/<stream>/"),
    ("input_transport", "", "raw or compressed (<image_topic>/compressed)"),
    ("preset", "", "model preset: lite (shipped), camvid34, accel18/34/50/101"),
    ("checkpoint", "", "default (shipped weights), none, or a .pt path"),
    ("device", "", "auto, cpu or cuda:N"),
)


def _nodes(context, *args, **kwargs):  # OpaqueFunction passes extra args
    overrides = {}
    for name, _, _ in NODE_PARAMETERS:
        value = LaunchConfiguration(name).perform(context).strip()
        if value and name == "image_topics":  # a launch argument is a string: split it
            overrides[name] = [topic.strip() for topic in value.split(",") if topic.strip()]
        elif value:
            overrides[name] = value
    share = get_package_share_directory(PACKAGE)
    nodes = [
        Node(
            package=PACKAGE,
            executable="accel_segmentation_node",
            name="accel_segmentation",
            output="screen",
            parameters=[LaunchConfiguration("params_file").perform(context), overrides],
        )
    ]
    if LaunchConfiguration("use_rviz").perform(context).lower() in ("true", "1"):
        # config/accel.rviz shows the relative topics `image`, `accel_segmentation/color` and
        # `accel_segmentation/overlay`; the input is remapped here, not hard-coded there.
        nodes.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="accel_rviz",
                arguments=["-d", os.path.join(share, "config", "accel.rviz")],
                remappings=[("image", overrides.get("image_topic", "image"))],
            )
        )
    return nodes


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=text)
        for name, default, text in NODE_PARAMETERS
    ]
    return LaunchDescription(
        [
            *arguments,
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "accel.yaml"),
                description="ROS 2 parameters file for the accel_segmentation node",
            ),
            DeclareLaunchArgument(
                "use_rviz", default_value="true", description="start rviz2 with config/accel.rviz"
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
