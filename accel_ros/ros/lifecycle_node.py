"""ROS 2 managed node `accel_segmentation` (executable `accel_segmentation_lifecycle_node`).

The same node as ros/node.py, run through rclpy's lifecycle state machine so that a supervisor
(a lifecycle manager, `ros2 lifecycle set`, the `~/change_state` service) decides when it loads
its model and when it takes frames. It starts unconfigured, holding nothing but its lifecycle
services. The steps are `SegmentationNodeSteps`', in the order `AccelSegmentationNode` runs them
at construction:

  configure   read and declare the parameters (the first time), build the segmenter (its
              backend prepared: an exported graph is exported and loaded now)
  activate    the streams' subscriptions and publishers, /diagnostics, ~/label_info and the
              worker thread; keyframe caches start empty
  deactivate  the worker finishes its frame; subscriptions, publishers and the diagnostics timer
              go, so an inactive node publishes nothing. The model stays loaded
  cleanup     the model is freed (CUDA's cached memory too)
  shutdown    from any state: whatever exists is stopped and freed

A configuration that cannot work (bad parameter value, missing checkpoint, no CUDA) fails the
transition with one error line and leaves the node unconfigured. Live parameters may change in
any state once configured; restart-only parameters are fixed at the first configuration.
"""

from __future__ import annotations

import sys
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from .node import NODE_NAME, SegmentationNodeSteps, StartupError, run_node


class AccelSegmentationLifecycleNode(SegmentationNodeSteps, LifecycleNode):
    """The segmentation node as a managed (lifecycle) node.

    `segmenter` injects a ready AccelSegmenter, used at every configuration (cleanup then only
    drops the node's reference); otherwise configure builds one from the parameters. Other
    keyword arguments go to rclpy's LifecycleNode.
    """

    def __init__(self, segmenter: Any = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._injected = segmenter
        self.get_logger().info("unconfigured: configure and activate it through "
                               f"{self.get_fully_qualified_name()}/change_state")

    @property
    def is_active(self) -> bool:
        """Streams, topics and worker exist (between activation and deactivation)."""
        return self._processor is not None

    def _settings(self) -> Any:
        """The first configuration reads and declares the parameters; later ones reuse the
        settings, which the parameter callback has kept equal to them since."""
        if hasattr(self, "settings"):
            return self.settings
        settings = self._read_parameters()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        return settings

    # --- transitions ---------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure(self._settings(), self._injected)
        except StartupError as error:
            self.get_logger().error(f"cannot configure: {error}")
            self._release_segmenter()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("configured: model loaded")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Frames from before a deactivation are no reference for the next ones.
        self.segmenter.reset(stream=None)
        try:
            self._create_streams()
        except StartupError as error:
            self.get_logger().error(f"cannot activate: {error}")
            self._stop_streams()
            return TransitionCallbackReturn.FAILURE
        self._start_worker()
        self.get_logger().info("active: segmenting")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streams()
        self.get_logger().info("inactive: model kept, nothing published")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_segmenter()
        self.get_logger().info("unconfigured: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self.get_logger().info(f"finalized (from {state.label})")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # A transition raised: back to unconfigured with nothing held.
        self.get_logger().error(f"a transition from {state.label} failed: freeing everything")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        if self.is_active:
            self._stop_streams()
        self._release_segmenter()

    def destroy_node(self) -> None:
        self._teardown()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run accel_ros accel_segmentation_lifecycle_node`: the managed node,
    unconfigured until told otherwise (exit status as `accel_ros.ros.node.run_node`)."""
    return run_node(AccelSegmentationLifecycleNode, args)


if __name__ == "__main__":
    sys.exit(main())
