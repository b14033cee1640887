"""Launch the Accel segmentation node, optionally with rviz2.

    ros2 launch accel_ros accel.launch.py image_topic:=/camera/image_raw device:=cuda:0
    ros2 launch accel_ros accel.launch.py params_file:=/path/my.yaml use_rviz:=false

`preset` and `device` override the parameters file only when given (empty = keep the file's).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "accel_ros"


def _segmentation_node(context, *args, **kwargs):  # OpaqueFunction passes extra args
    overrides = {}
    for name in ("preset", "device"):
        value = LaunchConfiguration(name).perform(context).strip()
        if value:
            overrides[name] = value
    return [
        Node(
            package=PACKAGE,
            executable="accel_segmentation_node",
            name="accel_segmentation",
            output="screen",
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[("image", LaunchConfiguration("image_topic"))],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "image_topic",
                default_value="/camera/image_raw",
                description="sensor_msgs/Image topic to segment (remaps the node's 'image')",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "accel.yaml"),
                description="ROS 2 parameters file for the accel_segmentation node",
            ),
            DeclareLaunchArgument(
                "preset",
                default_value="",
                description="model preset (accel18/34/50/101, camvid34); empty = params_file",
            ),
            DeclareLaunchArgument(
                "device",
                default_value="",
                description="auto, cpu or cuda:N; empty = params_file",
            ),
            DeclareLaunchArgument(
                "use_rviz", default_value="true", description="start rviz2 with config/accel.rviz"
            ),
            OpaqueFunction(function=_segmentation_node),
            Node(
                package="rviz2",
                executable="rviz2",
                name="accel_rviz",
                arguments=["-d", os.path.join(share, "config", "accel.rviz")],
                condition=IfCondition(LaunchConfiguration("use_rviz")),
            ),
        ]
    )
