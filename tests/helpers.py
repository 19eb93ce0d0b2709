"""Helpers shared by the tests: paths, and small data sets made in the formats users bring."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from metalab.cli import main
from metalab.tasks import EpisodeSampler, TaskBatch

REPO = Path(__file__).resolve().parent.parent


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def devices() -> list:
    """pytest params over the devices a test should run on: the CPU, and CUDA and MPS, each skipped
    with the reason where this machine lacks it (ids "cpu", "cuda", "mps": `pytest -k cuda` picks
    the GPU cases)."""
    no_cuda = "no CUDA device here" + (
        " (this torch build has no CUDA)" if torch.version.cuda is None else ""
    )
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param(
            "cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=no_cuda)
        ),
        pytest.param("mps", id="mps", marks=pytest.mark.skipif(not _mps(), reason="no MPS device here")),
    ]


def run(capsys, *argv):
    """`metalab ARGV...` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def image_batch(tasks=5, ways=3, shots=2, queries=2, size=16, seed=0, dtype=None) -> TaskBatch:
    """Gaussian-noise images of shape (1, size, size) in N-way K-shot layout, labels 0..N-1."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype)
    qx = torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return TaskBatch(sx, sy, qx, qy)


def episode_batch(ways=5, shots=2, queries=3, tasks=2, seed=0) -> TaskBatch:
    """Episodes drawn by an `EpisodeSampler` from 10 classes of 20 uniform-noise 28x28 images."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(10 * 20, 1, 28, 28, generator=g), torch.arange(10).repeat_interleave(20)
    return EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, seed=seed).sample(tasks)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def classification_csv(path, classes=10, per_class=8, seed=0):
    """Columns a, b, c (class-dependent means, in different units), a label, a free-text note."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 3)) * np.array([1, 100, 0.01])
    rows = [
        [*(centres[k] + rng.normal(0, 0.3, 3) * np.array([1, 100, 0.01])), f"species_{k}"]
        for k in range(classes)
        for _ in range(per_class)
    ]
    return write_csv(path, ["a", " b", "c ", "label"], rows)  # spaces around names are stripped


def regression_csv(path, tasks=12, per_task=10, seed=0):
    """y = slope * x + offset, one (slope, offset) per task; plus a constant column."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        slope, offset = rng.uniform(-2, 2, 2)
        for x in rng.uniform(-3, 3, per_task):
            rows.append([f"shop{t}", x, 7.0, slope * x + offset])
    return write_csv(path, ["shop", "x", "constant", "sales"], rows)


def set_mixed_scales(norm):
    """Scales of both signs (pooling first must take the window's min where one is negative) and
    random shifts, for a 6-channel batch norm."""
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.3, -0.7, 0.4, -2.0, 0.9, -0.1]))
        norm.bias.copy_(torch.randn(6))


def assert_same_derivatives(fast, plain, x, tolerance):
    """Outputs, gradients (from a plain backward and from one with create_graph) and the
    second-order gradients MAML differentiates through, of two models on the same input, equal to
    `tolerance` (relative, and absolute scaled by the largest entry of
    that order: a parameter whose true derivative is 0, like the first conv bias's, gets rounding
    noise of the size of the others' rounding)."""

    def derivatives(model):
        params = list(model.parameters())
        out = model(x)
        first = torch.autograd.grad(out.square().sum(), params)  # the fused layers' own backward
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), params, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), params)
        return [[out], list(first), list(grads), list(second)]

    for fast_order, plain_order in zip(derivatives(fast), derivatives(plain)):
        largest = max(b.abs().max().item() for b in plain_order)
        for a, b in zip(fast_order, plain_order):
            assert torch.allclose(a, b, rtol=tolerance, atol=tolerance * (1 + largest))
