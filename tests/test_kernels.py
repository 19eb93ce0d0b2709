"""Conv-4's compiled CPU kernels (metalab/models/fast/_conv4_kernels.cpp): they build where a
compiler is, and FastConv4 on them computes what the plain Conv4 computes, values and derivatives."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

import metalab
from helpers import assert_same_derivatives, set_mixed_scales
from metalab.models import BatchStatNorm2d, Conv4, FastConv4
from metalab.models.fast import model as fast_paths
from metalab.models.fast import second_order_forward
from metalab.models.fast._kernels import build_name, kernels


def _compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++")


needs_kernels = pytest.mark.skipif(
    _compiler() is None, reason="no C++ compiler on this machine: Conv-4 runs the plain PyTorch ops"
)


@needs_kernels
def test_kernels_build_where_a_compiler_is():
    source = "metalab/models/fast/_conv4_kernels.cpp"
    assert kernels() is not None, f"a compiler ({_compiler()}) is here but {source} did not build (stderr)"


@needs_kernels
def test_two_checkouts_build_the_kernels_once_each_and_never_again(tmp_path):
    """Two copies of the package, one with the same source as this checkout and one with a changed
    source, used in turn: the first shares this checkout's build, the second builds once (saying
    so on stderr), and neither makes the other rebuild."""
    assert kernels() is not None  # this checkout's build exists
    package = Path(metalab.__file__).parent
    for copy in ("a", "b"):
        shutil.copytree(package, tmp_path / copy / "metalab", ignore=shutil.ignore_patterns("__pycache__"))
    changed = tmp_path / "b" / "metalab" / "models" / "fast" / "_conv4_kernels.cpp"
    changed.write_text(
        changed.read_text() + f"\n// a changed copy ({uuid.uuid4().hex})\n"
    )  # never built before

    def use(copy: str) -> str:
        script = "from metalab.models.fast._kernels import build_name, kernels; assert kernels() is not None"
        env = {**os.environ, "PYTHONPATH": str(tmp_path / copy)}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    log = {copy: [] for copy in "ab"}
    try:
        for copy in "abab":
            log[copy].append("compiling the Conv-4 CPU kernels" in use(copy))
    finally:  # the changed copy's build is of no further use
        from torch.utils.cpp_extension import _get_build_directory

        shutil.rmtree(_get_build_directory(build_name(changed), verbose=False), ignore_errors=True)
    assert log == {"a": [False, False], "b": [True, False]}


def test_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("METALAB_KERNELS", "0")
    assert kernels() is None


def _spy(monkeypatch, name):
    calls = []
    function = getattr(fast_paths, name)

    class Spy(function):
        @classmethod
        def apply(cls, *args):
            calls.append(name)
            return function.apply(*args)

    monkeypatch.setattr(fast_paths, name, Spy)
    return calls


@needs_kernels
@pytest.mark.parametrize("norm", ["batch_stats", "batch"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("size", [28, 20])
def test_kernel_paths_match_the_plain_nchw_model(monkeypatch, norm, training, size):
    """FastConv4 on the kernels (first block, then batch norm -> pool -> ReLU of blocks 2-4)
    against the plain Conv4 in NCHW, in float64: outputs, gradients from the kernels' own
    backward, the second-order gradients (the kernels' backward rebuilding the plain graph under
    create_graph, and, under `second_order_forward`, the plain ops directly), running statistics.
    Scales of both signs in every block; binary images (ties in the pooling windows); 28x28 pools
    14 -> 7 -> 3 (an odd map), 20x20 pools 10 -> 5 -> 2."""
    torch.manual_seed(3)
    fast = FastConv4(in_channels=1, hidden=6, out_features=4, image_size=size, norm=norm).double()
    for layer in fast.features:
        if isinstance(layer, (nn.BatchNorm2d, BatchStatNorm2d)):
            set_mixed_scales(layer)
    plain = Conv4(
        in_channels=1, hidden=6, out_features=4, image_size=size, norm=norm, channels_last=False
    ).double()
    plain.load_state_dict(fast.state_dict())
    x = (torch.rand(9, 1, size, size) > 0.6).double()
    if norm == "batch" and not training:
        warm_up = torch.rand(9, 1, size, size).double()
        for model in (fast, plain):
            model(warm_up)
            model.eval()
    first, blocks = _spy(monkeypatch, "_FirstBlockKernel"), _spy(monkeypatch, "_NormPoolReLUKernel")

    assert_same_derivatives(fast, plain, x, tolerance=1e-9)
    assert first and len(blocks) == 3 * len(first)  # the kernels ran, once per block per forward
    with second_order_forward():
        assert_same_derivatives(fast, plain, x, tolerance=1e-9)
    for name, buf in plain.named_buffers():
        assert torch.allclose(dict(fast.named_buffers())[name], buf), name


@needs_kernels
def test_kernels_in_float32_are_as_accurate_as_the_plain_ops():
    """fp32 outputs and gradients of the kernel model against float64, no worse than the NCHW
    model on plain ops on Omniglot-like images (ink on a zero background)."""
    torch.manual_seed(0)
    exact = Conv4(in_channels=1, hidden=64, out_features=20, image_size=28, channels_last=False).double()
    x = (torch.rand(150, 1, 28, 28) > 0.9).double()
    logits = exact(x)
    truth = torch.autograd.grad(logits.square().sum(), list(exact.parameters()))
    errors = {}
    for channels_last in (True, False):
        backbone = FastConv4 if channels_last else Conv4
        model = backbone(1, 64, 20, image_size=28, channels_last=channels_last)
        model.load_state_dict(exact.state_dict())
        out = model(x.float())
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        flat, true_flat = (
            torch.cat([g.double().flatten() for g in grads]),
            torch.cat([t.flatten() for t in truth]),
        )
        relative = ((flat - true_flat).norm() / true_flat.norm()).item()
        errors[channels_last] = ((out.double() - logits).abs().max().item(), relative)
    (kernel_out, kernel_grad), (_, plain_grad) = errors[True], errors[False]
    assert kernel_out < 1e-4 and kernel_grad < 1e-3, errors
    assert kernel_grad < 10 * plain_grad + 1e-6, errors
