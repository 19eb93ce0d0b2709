"""The plain reference Conv4 and FastConv4 beside it: the reference never reaches the fast path, the
two share parameters and state_dicts, and FastConv4 computes what Conv4 computes (float64, with the
compiled kernels and with their Python fallback)."""

import ast
import inspect

import pytest
import torch

import metalab.models.conv4 as plain_module
import metalab.models.fast as fast_package
from helpers import assert_same_derivatives, set_mixed_scales
from metalab.models import Conv4, FastConv4
from metalab.models.fast import _kernels, conv4, functions, hints
from metalab.models.fast import model as fast_paths

VARIANTS = [
    dict(in_channels=1, hidden=6, out_features=4, image_size=16, norm="batch_stats"),
    dict(in_channels=1, hidden=6, out_features=None, image_size=16, norm="batch"),
    dict(in_channels=3, hidden=6, out_features=4, image_size=16, norm="batch", channels_last=False),
]


class _Tripwire:
    """Stands in for a fast-path function or class: any call or attribute of it fails the test."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"the plain Conv4 reached the fast path: {self.name}")

    def __getattr__(self, attribute):
        raise AssertionError(f"the plain Conv4 reached the fast path: {self.name}.{attribute}")


def test_plain_conv4_imports_nothing_of_the_fast_path_or_training_machinery():
    tree = ast.parse(inspect.getsource(plain_module))
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    allowed = ("__future__", "torch")
    assert modules and all(m in allowed or m.startswith("torch.") for m in modules), modules


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_plain_conv4_never_calls_into_the_fast_path(monkeypatch, kwargs):
    """Every function and class of models/fast (the fused blocks, the Functions, the kernel loader,
    the second-order hint) replaced by a tripwire: the plain Conv4 runs forward, backward and
    second-order backward, in training and in eval mode, without touching one."""
    for module in (fast_package, fast_paths, functions, _kernels, hints):
        for name, value in list(vars(module).items()):
            ours = (getattr(value, "__module__", None) or "").startswith(fast_package.__name__)
            if ours and (inspect.isfunction(value) or inspect.isclass(value)):
                monkeypatch.setattr(module, name, _Tripwire(f"{module.__name__}.{name}"))
    torch.manual_seed(0)
    model = Conv4(**kwargs)
    x = torch.randn(5, kwargs["in_channels"], 16, 16)
    for training in (True, False):
        model.train(training)
        params = list(model.parameters())
        grads = torch.autograd.grad(model(x).square().sum(), params, create_graph=True)
        torch.autograd.grad(sum((g * g).sum() for g in grads), params)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_fast_and_plain_conv4_have_the_same_parameters_and_state_dict(kwargs):
    torch.manual_seed(0)
    plain = conv4(fast=False, **kwargs)
    torch.manual_seed(0)
    fast = conv4(fast=True, **kwargs)
    assert type(plain) is Conv4 and type(fast) is FastConv4
    assert list(plain.state_dict()) == list(fast.state_dict())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in fast.named_parameters()]
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name  # the same initialisation from the same seed
    assert (plain.feature_dim, plain.channels_last) == (fast.feature_dim, fast.channels_last)
    fast.load_state_dict(plain.state_dict())  # strict, both ways
    plain.load_state_dict(fast.state_dict())


@pytest.mark.parametrize("compiled,norm", [(True, "batch_stats"), (True, "batch"), (False, "batch")])
def test_fast_conv4_computes_what_conv4_computes(monkeypatch, compiled, norm):
    """FastConv4 against the plain Conv4 built with the same arguments and weights, on 35 Omniglot-
    sized binary images (the first block's fallback takes chunks from 32 on), scales of both signs:
    outputs, gradients, second-order gradients and running statistics in float64, with the
    compiled kernels (where a compiler is) and with METALAB_KERNELS=0 (tests/test_functional.py
    holds the fallback with batch statistics to the NCHW model)."""
    if not compiled:
        monkeypatch.setenv("METALAB_KERNELS", "0")
    torch.manual_seed(4)
    fast = FastConv4(in_channels=1, hidden=6, out_features=4, image_size=28, norm=norm).double()
    for layer in fast.features[1::4]:
        set_mixed_scales(layer)
    plain = Conv4(in_channels=1, hidden=6, out_features=4, image_size=28, norm=norm).double()
    plain.load_state_dict(fast.state_dict())
    x = (torch.rand(35, 1, 28, 28) > 0.6).double()
    assert_same_derivatives(fast, plain, x, tolerance=1e-9)
    for name, buf in plain.named_buffers():
        assert torch.allclose(dict(fast.named_buffers())[name], buf), name


def test_the_kernels_key_selects_the_fast_or_the_plain_model():
    from metalab.builders import build_learner
    from metalab.config import Config

    for algorithm in ("maml", "protonet", "baseline"):
        c = dict(benchmark="omniglot", algorithm=algorithm, data_dir="unused")
        fast = build_learner(Config(**c).resolved())
        plain = build_learner(Config(**c, kernels="off").resolved())
        assert any(isinstance(m, FastConv4) for m in fast.modules()), algorithm
        assert not any(isinstance(m, FastConv4) for m in plain.modules()), algorithm
        assert fast.state_dict().keys() == plain.state_dict().keys()
