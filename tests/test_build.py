"""The installed package: layout, package data, no stray top-level modules."""
import ast
import importlib.util
import pathlib

import dlcpu
from dlcpu import workloads


def test_cli_is_installed_inside_dlcpu():
    assert importlib.util.find_spec("dlcpu.cli") is not None
    assert importlib.util.find_spec("cli") is None, "a top-level 'cli' package must not be installed"


def setup_extensions():
    """The names in setup.py's EXTENSIONS table (read, not executed), so this list cannot drift."""
    tree = ast.parse((pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXTENSIONS" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no EXTENSIONS table")


def test_extensions_present():
    names = setup_extensions()
    assert {"cpu", "layout", "brgemm", "conv_direct", "conv_wu", "winograd", "pool", "norm", "rnn"} <= set(names)
    for name in names:
        assert importlib.util.find_spec(f"dlcpu._ext.{name}") is not None, name


def test_workloads_shipped():
    layers = workloads.resnet50_layers()
    assert len(layers) == 23 and sum(l.count for l in layers) == 53
    total = sum(l.count * 2 * l.K * l.P * l.Q * l.C * l.R * l.S for l in layers)
    assert abs(total / 1e9 - 8.174) < 0.01  # the table's own header: 8.174 GFLOP per image


def test_public_api_is_small():
    assert set(dlcpu.__all__) == {"BlockedTensor", "block_weights", "brgemm", "conv2d", "conv2d_backward",
                                  "prepare_winograd", "from_blocked", "info",
                                  "matmul", "to_blocked", "unblock_weights", "__version__",
                                  "to_bf16_blocked", "block_weights_bf16"}   # bf16 operands, converted once


def test_descriptor_round_trip():
    for layer in workloads.resnet50_layers():
        again = workloads.parse_conv_descriptor(layer.descriptor(4))
        assert (again.C, again.K, again.H, again.W, again.R, again.S, again.stride_h, again.pad_h, again.mb) == (
            layer.C, layer.K, layer.H, layer.W, layer.R, layer.S, layer.stride_h, layer.pad_h, 4)
