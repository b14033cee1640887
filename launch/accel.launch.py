"""Launch the Accel segmentation node, optionally with rviz2.

    ros2 launch accel_ros accel.launch.py image_topic:=/camera/image_raw device:=cuda:0
    ros2 launch accel_ros accel.launch.py params_file:=/path/my.yaml use_rviz:=false
    ros2 launch accel_ros accel.launch.py image_topics:=front/image,left/image,right/image
    ros2 launch accel_ros accel.launch.py lifecycle:=true autostart:=false

Every argument except `params_file`, `use_rviz`, `lifecycle` and `autostart` is the node
parameter of the same name (NODE_PARAMETERS); an empty value keeps the parameters file's. Their
descriptions, allowed values included, come from the node's parameter table
(accel_ros.ros.parameters). `lifecycle:=true` starts the managed node
(`accel_segmentation_lifecycle_node`); `autostart` then configures and activates it from here,
or (false) leaves it unconfigured for a lifecycle manager. Not run here: launch_ros has no PyPI
wheel (the node itself is started by its console script in the tests).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from accel_ros.ros.parameters import PARAMETER_SPECS

PACKAGE = "accel_ros"
# Launch arguments passed to the node as parameters of the same name: (name, default).
NODE_PARAMETERS = (
    ("image_topic", "/camera/image_raw"),
    ("image_topics", ""),
    ("input_transport", ""),
    ("preset", ""),
    ("checkpoint", ""),
    ("device", ""),
)
# A launch argument is a string: how it becomes the parameter, where that needs saying.
_AS_STRING = {"image_topics": "comma-separated (front/image,left/image)"}


def _description(name: str) -> str:
    """The parameter's own description and allowed values."""
    spec = PARAMETER_SPECS[name]
    parts = [_AS_STRING.get(name, ""), spec.description, spec.constraints()]
    return "; ".join(part for part in parts if part)


def _flag(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1")


def _segmentation(context, parameters: list) -> list:
    """The node, or the managed node with (when `autostart`) its configure and activate."""
    common = dict(package=PACKAGE, name="accel_segmentation", output="screen",
                  parameters=parameters)
    if not _flag(context, "lifecycle"):
        return [Node(executable="accel_segmentation_node", **common)]
    node = LifecycleNode(executable="accel_segmentation_lifecycle_node", namespace="", **common)
    if not _flag(context, "autostart"):
        return [node]

    def transition(transition_id: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                           transition_id=transition_id))

    # Activate after the configuration only: a supervisor's later deactivate must hold.
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[transition(Transition.TRANSITION_ACTIVATE)]))
    return [node, activate, transition(Transition.TRANSITION_CONFIGURE)]


def _nodes(context, *args, **kwargs):  # OpaqueFunction passes extra args
    overrides = {}
    for name, _ in NODE_PARAMETERS:
        value = LaunchConfiguration(name).perform(context).strip()
        if value and name == "image_topics":  # a launch argument is a string: split it
            overrides[name] = [topic.strip() for topic in value.split(",") if topic.strip()]
        elif value:
            overrides[name] = value
    share = get_package_share_directory(PACKAGE)
    nodes = _segmentation(context,
                          [LaunchConfiguration("params_file").perform(context), overrides])
    if _flag(context, "use_rviz"):
        # config/accel.rviz shows the relative topics `image`, `accel_segmentation/color`,
        # `accel_segmentation/overlay` and (with accel_segmentation/camera_info beside it, in
        # 3D) `accel_segmentation/color`; the input is remapped here, not hard-coded there.
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
        DeclareLaunchArgument(name, default_value=default, description=_description(name))
        for name, default in NODE_PARAMETERS
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
            DeclareLaunchArgument(
                "lifecycle", default_value="false",
                description="start the managed (lifecycle) node, accel_segmentation_lifecycle_node",
            ),
            DeclareLaunchArgument(
                "autostart", default_value="true",
                description="with lifecycle:=true, configure and activate it at once (false: "
                "leave it unconfigured for a lifecycle manager)",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
