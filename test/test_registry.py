"""Registries: the keys of one registry are the allowed values of a setting everywhere (the
config checks, the command lines' choices and defaults, the implementations bound to them)."""

from __future__ import annotations

import argparse

import pytest

from accel_ros.config import BACKENDS, CHOICES, FLOW_METHODS, MODES, PRECISIONS, PipelineConfig
from accel_ros.registry import Registry
from accel_ros.ros.parameters import PARAMETER_SPECS, NodeOptions

# Command-line spellings of settings whose flag is not --name-with-dashes.
FLAG_NAMES = {"--flow": "flow_method"}
# Options that take another default than the setting's on purpose: (subcommand, flag).
OWN_DEFAULTS = {
    ("fleet", "--device"): "cpu",  # a fleet's workers run on the CPU unless told otherwise
    ("segment", "--palette"): None,  # None: the model's own palette
    ("bench", "--backend"): "torch",  # PyTorch eager: the baseline of the benchmark's ratios
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from accel_ros.cli.main import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _setting_options() -> list[tuple[str, str, str, argparse.Action]]:
    """(subcommand, flag, setting name, action) of every option that sets a node parameter."""
    found = []
    for command, parser in _subcommands().items():
        for action in parser._actions:
            for flag in action.option_strings:
                name = FLAG_NAMES.get(flag, flag.lstrip("-").replace("-", "_"))
                if flag.startswith("--") and name in PARAMETER_SPECS:
                    found.append((command, flag, name, action))
    return found


def test_a_registry_checks_orders_and_binds_by_its_keys():
    colours = Registry("colour", ("red", "green"))
    assert tuple(colours) == colours.choices == ("red", "green") and "red" in colours
    colours.check("green")
    with pytest.raises(ValueError, match=r"colour 'blue' is not one of \('red', 'green'\)"):
        colours.check("blue")
    with pytest.raises(ValueError, match="paint 'blue'"):
        colours.check("blue", "paint")
    assert colours.ordered(("green", "red")) == ("green", "red")
    with pytest.raises(ValueError, match="not an order"):
        colours.ordered(("green",))
    assert colours.bind({"green": 2, "red": 1}) == {"red": 1, "green": 2}  # the registry's order
    with pytest.raises(ValueError, match=r"missing for \['green'\].*unknown values \['blue'\]"):
        colours.bind({"red": 1, "blue": 3})
    assert colours.bind({"green": 2}, values=("green",)) == {"green": 2}
    with pytest.raises(ValueError, match="colour 'blue' is not one of"):
        colours.bind({}, values=("blue",))
    assert MODES.select(lambda mode: mode.every_frame) == ("deeplab", "reference")


def test_every_command_line_choice_list_is_its_registry():
    """--mode, --flow, --backend, --precision, --palette, ... of every subcommand offer exactly
    the keys of the setting's registry (bench's --backend is a comma list of them)."""
    checked = set()
    for command, flag, name, action in _setting_options():
        if name not in CHOICES:
            continue
        if (command, flag) == ("bench", "--backend"):
            assert action.choices is None  # a comma list, checked by BenchSettings
            continue
        assert tuple(action.choices) == CHOICES[name].choices, (command, flag)
        checked.add(name)
    assert {"mode", "flow_method", "backend", "precision", "preset", "palette",
            "out_of_frame"} <= checked


def test_command_line_defaults_are_the_config_defaults():
    """Every option of a setting defaults to PipelineConfig's / NodeOptions' value, so a new
    default (say backend: auto) is one line in config.py."""
    defaults = PipelineConfig().to_dict() | vars(NodeOptions())
    checked = set()
    for command, flag, name, action in _setting_options():
        want = OWN_DEFAULTS.get((command, flag), defaults[name])
        assert action.default == want, (command, flag, action.default, want)
        checked.add(name)
    assert {"mode", "keyframe_interval", "flow_method", "flow_scale", "device", "backend",
            "precision", "overlay_alpha"} <= checked


def test_the_command_line_takes_a_new_default_from_the_config(monkeypatch):
    """The derivation is live: a changed PipelineConfig default reaches the options."""
    from accel_ros.cli import options

    parser = argparse.ArgumentParser()
    monkeypatch.setattr(options, "PipelineConfig",
                        lambda: PipelineConfig(backend="openvino", flow_method="zero"))
    options.add_model_options(parser)
    args = parser.parse_args([])
    assert (args.backend, args.flow, args.mode) == ("openvino", "zero", "accel")
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tensorrt"])


def test_implementations_are_bound_to_every_value():
    """Each flow method has its estimator and each backend its builder of network calls, in
    the registry's order; a value without one would have failed at import."""
    from accel_ros.config import BACKBONES
    from accel_ros.deploy.runtimes import RUNTIMES, SESSIONS
    from accel_ros.model.backbone import _BUILDERS
    from accel_ros.model.efficientnet import LITE_SPECS
    from accel_ros.model.flow import FLOW_ESTIMATORS
    from accel_ros.stream.segmenter import NETWORK_CALLS

    assert tuple(FLOW_ESTIMATORS) == FLOW_METHODS.choices
    assert (*_BUILDERS, *LITE_SPECS) == BACKBONES.choices
    # auto is not a runtime: the segmenter resolves it to one of the others first.
    assert tuple(NETWORK_CALLS) == BACKENDS.select(lambda backend: not backend.chooses)
    assert BACKENDS.select(lambda backend: backend.chooses) == ("auto",)
    assert RUNTIMES == ("onnxruntime", "openvino") == tuple(SESSIONS)
    assert all(set(BACKENDS[name].precisions) <= set(PRECISIONS) for name in BACKENDS)
    assert BACKENDS["torch"].precisions == ("fp32", "fp16", "bf16")  # int8: openvino's
    assert BACKENDS["auto"].precisions == PRECISIONS.choices


def test_a_runtime_refuses_a_precision_its_entry_does_not_list():
    from accel_ros.deploy.backends import check_runtime

    with pytest.raises(ValueError, match="backend onnxruntime runs precision fp32, got 'bf16'"):
        check_runtime("onnxruntime", "bf16")
    with pytest.raises(ValueError, match="backend openvino runs precision fp32 or bf16 or "
                                         "int8, got 'fp16'"):
        check_runtime("openvino", "fp16")
    with pytest.raises(ValueError, match="runtime 'torch' is not one of"):
        check_runtime("torch", "fp32")
