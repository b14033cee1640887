"""What the rviz2 view (config/accel.rviz) shows, and how the launch file points it at a camera.

The configuration names relative topics: `image` (the camera), and `<node>/color`,
`<node>/overlay` and `<node>/camera_info` (the segmentation of one camera). With several
cameras the node publishes `<node>/<stream>/color`, ...; the view then shows the first camera,
through remappings rather than a second configuration file.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..io.topics import CAMERA_INFO, COLOR, OVERLAY, output_topic
from .streams import stream_names

# The node's outputs that config/accel.rviz displays (under the node's name).
VIEWED_OUTPUTS = (COLOR, OVERLAY, CAMERA_INFO)


def rviz_remappings(node_name: str, image_topic: str,
                    image_topics: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Remappings for rviz2 with config/accel.rviz: its `image` to the camera the node reads
    and, with several cameras (`image_topics`), its `<node_name>/<output>` topics to the
    first camera's `<node_name>/<stream>/<output>`."""
    if not image_topics:
        return [("image", image_topic)]
    stream = stream_names(image_topics)[0]
    return [("image", image_topics[0])] + [
        (output_topic(f"{node_name}/", output), output_topic(f"{node_name}/{stream}/", output))
        for output in VIEWED_OUTPUTS]
