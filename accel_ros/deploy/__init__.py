"""Deployment: the networks as ONNX graphs (`export`), run by OpenVINO or ONNX Runtime
(`backends`, the `backend` of PipelineConfig).

Needs the optional extras: pip install 'accel_ros[openvino]' or 'accel_ros[onnxruntime]'
(`accel-ros export` alone: 'accel_ros[onnx]'). docs/deploy.md is the user's page.
"""

from .backends import GraphNetworks, build_networks
from .export import ExportKey, Manifest, cache_root, cached_graphs, export_graphs, weights_hash
from .graphs import GRAPH_NAMES
from .runtimes import RUNTIMES, BackendUnavailableError

__all__ = [
    "GRAPH_NAMES",
    "RUNTIMES",
    "BackendUnavailableError",
    "ExportKey",
    "GraphNetworks",
    "Manifest",
    "build_networks",
    "cache_root",
    "cached_graphs",
    "export_graphs",
    "weights_hash",
]
