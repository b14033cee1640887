"""Output topic names: what each output of a camera is called, for the node (`~/labels`, or
`~/<stream>/labels` with several cameras) and for the bags `accel-ros segment` writes
(`<camera topic>/labels`). One list of names and one rule, `<prefix><kind>`, so that a bag
replayed offline and the live node name the same things alike."""

from __future__ import annotations

from collections.abc import Sequence

LABELS, COLOR, OVERLAY, SCORES = "labels", "color", "overlay", "scores"
STATS, CAMERA_INFO, LABEL_INFO = "stats", "camera_info", "label_info"

# The node's outputs per camera. LABEL_INFO describes the model: one for the whole node.
NODE_OUTPUTS = (LABELS, COLOR, OVERLAY, SCORES, STATS, CAMERA_INFO)
# A bag's outputs per camera: no overlay or scores (the colour image and the input are both
# there), no camera_info (the input's is copied through), LABEL_INFO once per camera.
BAG_OUTPUTS = (LABELS, COLOR, STATS, LABEL_INFO)


def output_topic(prefix: str, kind: str) -> str:
    """The topic of output `kind` under `prefix` ("~/", "~/front/", "/cam/image_raw/")."""
    if not prefix.endswith("/"):
        raise ValueError(f"an output prefix ends in '/', got {prefix!r}")
    return f"{prefix}{kind}"


def output_topics(prefix: str, kinds: Sequence[str]) -> dict[str, str]:
    """{kind: topic} of the outputs `kinds` under `prefix` (see `output_topic`)."""
    return {kind: output_topic(prefix, kind) for kind in kinds}
