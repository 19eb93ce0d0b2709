"""The functional core against hand-written references: MAML's meta-gradient (second and first
order, one and several steps), vmap == loop, Meta-SGD's and Reptile's gradients."""

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_derivatives, devices, image_batch, set_mixed_scales
from metalab import MAML, MetaSGD, Reptile, SineTasks
from metalab.models import MLP, Conv4, FastConv4
from metalab.models.fast import second_order_forward
from metalab.models.fast.model import _single_channel_block, _stats_first_applies

# References are compared in float64 (tight tolerances); conftest's fixture restores float32 after.
pytestmark = pytest.mark.usefixtures("float64")


def mlp_forward(p, x):
    """The 1-40-40-1 MLP written out by hand (independent of functional_call)."""
    h = torch.relu(x @ p["net.0.weight"].T + p["net.0.bias"])
    h = torch.relu(h @ p["net.2.weight"].T + p["net.2.bias"])
    return h @ p["net.4.weight"].T + p["net.4.bias"]


def conv4_forward(p, x):
    """Conv-4 with batch-statistics BatchNorm written out by hand."""
    for i in range(4):
        x = F.conv2d(x, p[f"features.{4 * i}.weight"], p[f"features.{4 * i}.bias"], padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-5)
        x = (
            x * p[f"features.{4 * i + 1}.weight"][:, None, None]
            + p[f"features.{4 * i + 1}.bias"][:, None, None]
        )
        x = F.max_pool2d(torch.relu(x), 2)
    return x.flatten(1) @ p["head.weight"].T + p["head.bias"]


def reference_meta_grad(forward, loss_fn, params, batch, lr, steps, first_order):
    """Finn et al. 2017, algorithm 2, task by task with torch.autograd.grad(create_graph=True)."""
    names = list(params)
    theta = [params[k] for k in names]
    total = 0.0
    for t in range(batch.num_tasks):
        phi = list(theta)
        for _ in range(steps):
            loss = loss_fn(forward(dict(zip(names, phi)), batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, phi, create_graph=not first_order)
            lrs = [lr[k] for k in names] if isinstance(lr, dict) else [lr] * len(names)
            phi = [w - a * g for w, a, g in zip(phi, lrs, grads)]
        total = total + loss_fn(forward(dict(zip(names, phi)), batch.query_x[t]), batch.query_y[t])
    meta = total / batch.num_tasks
    return meta, torch.autograd.grad(meta, theta + ([lr[k] for k in names] if isinstance(lr, dict) else []))


CASES = [(steps, first_order) for steps in (1, 3) for first_order in (False, True)]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("steps,first_order", CASES)
def test_maml_meta_gradient_matches_reference_mlp(strategy, steps, first_order, device):
    torch.manual_seed(0)
    learner = MAML(
        MLP(), "regression", inner_lr=0.01, inner_steps=steps, first_order=first_order, strategy=strategy
    ).to(device)
    batch = SineTasks(shots=10, queries=10, seed=3, device=device).sample(4).to(torch.float64)
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(learner.model.parameters()))
    ref_loss, ref_grads = reference_meta_grad(
        mlp_forward, F.mse_loss, dict(learner.model.named_parameters()), batch, 0.01, steps, first_order
    )
    assert torch.allclose(loss, ref_loss, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5)
    if not first_order:  # second order really differs from first order here
        _, fo = reference_meta_grad(
            mlp_forward, F.mse_loss, dict(learner.model.named_parameters()), batch, 0.01, steps, True
        )
        assert max((a - b).abs().max() for a, b in zip(fo, ref_grads)) > 1e-6


# Under vmap FastConv4 runs the plain layers, as Conv4 does: the loop tests both.
BACKBONES = [(Conv4, "loop"), (FastConv4, "loop"), (Conv4, "vmap")]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backbone,strategy", BACKBONES)
@pytest.mark.parametrize("steps,first_order", CASES)
def test_maml_meta_gradient_matches_reference_conv4_with_batchnorm(
    backbone, strategy, steps, first_order, device
):
    torch.manual_seed(0)
    model = backbone(in_channels=1, hidden=4, out_features=3, image_size=16).to(device)
    learner = MAML(
        model, "classification", inner_lr=0.4, inner_steps=steps, first_order=first_order, strategy=strategy
    )
    batch = image_batch(tasks=3).to(device)
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref_loss, ref_grads = reference_meta_grad(
        conv4_forward, F.cross_entropy, dict(model.named_parameters()), batch, 0.4, steps, first_order
    )
    assert torch.allclose(loss, ref_loss, atol=1e-10)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("backbone", [Conv4, FastConv4])
@pytest.mark.parametrize("norm", ["batch_stats", "batch"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_conv4_channels_last_computes_what_nchw_computes(backbone, norm, in_channels):
    """The channels-last layout (batch norm on the (n*h*w, c) matrix view) and FastConv4's paths on
    it (the one-channel first block) change no value: outputs, gradients and the second-order
    gradients MAML differentiates through, against the plain Conv-4 in NCHW."""
    torch.manual_seed(0)
    fast = backbone(in_channels=in_channels, hidden=6, out_features=4, image_size=16, norm=norm)
    plain = Conv4(
        in_channels=in_channels, hidden=6, out_features=4, image_size=16, norm=norm, channels_last=False
    )
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(7, in_channels, 16, 16)

    assert_same_derivatives(fast, plain, x, tolerance=1e-10)
    if norm == "batch":
        for name, buf in plain.named_buffers():
            assert torch.allclose(dict(fast.named_buffers())[name].double(), buf.double()), name


@pytest.mark.parametrize("norm", ["batch_stats", "batch"])
@pytest.mark.parametrize("scale", ["mixed signs", "one zero"])
@pytest.mark.parametrize("training", [True, False])
def test_first_block_statistics_first_matches_the_plain_order(norm, scale, training):
    """FastConv4's one-channel first block (batch statistics from the nine image columns, max-pool
    before the normalisation's affine map, `_single_channel_block`) against the plain Conv4's
    conv -> norm -> pool -> ReLU in NCHW: values, gradients, second-order gradients and running
    statistics, with negative scales (the window's max becomes its min), a zero scale (the plain
    path answers), on binary images whose windows hold ties, and in eval mode (running statistics)."""
    torch.manual_seed(1)
    fast = FastConv4(in_channels=1, hidden=6, out_features=4, image_size=16, norm=norm)
    set_mixed_scales(fast.features[1])
    if scale == "one zero":
        with torch.no_grad():
            fast.features[1].weight[2] = 0.0
    plain = Conv4(in_channels=1, hidden=6, out_features=4, image_size=16, norm=norm, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert _stats_first_applies(fast.features[1]) == (scale == "mixed signs")
    x = (torch.rand(9, 1, 16, 16) > 0.6).double()  # Omniglot-like: ties inside many windows
    if norm == "batch" and not training:
        warm_up = torch.rand(9, 1, 16, 16)
        for model in (fast, plain):  # running statistics worth using
            model(warm_up)
            model.eval()

    assert_same_derivatives(fast, plain, x, tolerance=1e-9)
    for name, buf in plain.named_buffers():
        assert torch.allclose(dict(fast.named_buffers())[name].double(), buf.double()), name


def test_first_block_chunked_matches_the_plain_order(monkeypatch):
    """FastConv4's first block a chunk of images at a time with its own backward
    (`_PooledProductBlock`, what runs where the compiled kernels cannot be built or are switched off
    by METALAB_KERNELS=0; tests/test_kernels.py tests those):
    35 images of 28x28 make chunks of 8, 8, 8, 8 and 3. First derivatives come from its fast
    backward, second-order ones from the graph it rebuilds when differentiated with create_graph,
    or, under `second_order_forward` (what a second-order inner step declares), from the plain ops
    directly; all against the plain Conv4's conv -> norm -> pool -> ReLU in NCHW, with negative
    scales and ties."""
    monkeypatch.setenv("METALAB_KERNELS", "0")
    torch.manual_seed(2)
    fast = FastConv4(in_channels=1, hidden=6, out_features=4, image_size=28).double()
    set_mixed_scales(fast.features[1])
    plain = Conv4(in_channels=1, hidden=6, out_features=4, image_size=28, channels_last=False).double()
    plain.load_state_dict(fast.state_dict())
    x = (torch.rand(35, 1, 28, 28) > 0.6).double()
    first = _single_channel_block(
        fast.features[0], fast.features[1], x.contiguous(memory_format=torch.channels_last)
    )
    assert type(first.grad_fn).__name__ == "_PooledProductBlockBackward"
    with second_order_forward():
        first = _single_channel_block(
            fast.features[0], fast.features[1], x.contiguous(memory_format=torch.channels_last)
        )
    assert type(first.grad_fn).__name__ == "ReluBackward0"

    def first_order(model):
        out = model(x)
        return [out, *torch.autograd.grad(out.square().sum(), list(model.parameters()))]

    for a, b in zip(first_order(fast), first_order(plain)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * (1 + b.abs().max().item()))
    assert_same_derivatives(fast, plain, x, tolerance=1e-9)
    with second_order_forward():
        assert_same_derivatives(fast, plain, x, tolerance=1e-9)


def test_conv4_channels_last_accuracy_in_float32():
    """fp32 outputs and gradients on Omniglot-like images (ink on a zero background) against
    float64. The first block's output is as accurate as the plain NCHW model's: the batch norm on
    the (n*h*w, c) matrix view it used before was 3e-3 off there, its fp32 variance losing digits
    when a channel is nearly constant, as the first convolution's output over a blank background
    is. The gradients stay within 1e-3: PyTorch's channels-last batch norm sums its columns over
    all n*h*w rows in fp32, less accurately than NCHW on the later blocks' norm parameters
    (docs/engine.md, "fp32 accuracy of the statistics", gives the measured errors)."""
    torch.manual_seed(0)
    exact = Conv4(in_channels=1, hidden=64, out_features=20, image_size=28, channels_last=False).double()
    x = (torch.rand(300, 1, 28, 28) > 0.9).double()
    errors = {}
    for name, channels_last in (("channels_last", True), ("nchw", False)):
        backbone = FastConv4 if channels_last else Conv4
        model = backbone(1, 64, 20, image_size=28, channels_last=channels_last)
        model = model.float()
        model.load_state_dict(exact.state_dict())
        out = {}
        for m, inputs in ((model, x.float()), (exact, x)):
            if m.channels_last:  # what FastConv4.forward runs for the first block
                first = _single_channel_block(
                    m.features[0], m.features[1], inputs.contiguous(memory_format=torch.channels_last)
                )
            else:
                first = m.features[:4](inputs)
            logits = m(inputs)
            grads = torch.autograd.grad(logits.square().sum(), list(m.parameters()))
            out[m] = (first.double(), logits.double(), torch.cat([g.double().flatten() for g in grads]))
        (b, f, g), (tb, tf, tg) = out[model], out[exact]
        errors[name] = (
            (b - tb).abs().max().item(),
            (f - tf).abs().max().item(),
            ((g - tg).norm() / tg.norm()).item(),
        )
    cl, nchw = errors["channels_last"], errors["nchw"]
    assert cl[0] < 1e-5 and cl[0] < 5 * nchw[0], errors
    assert cl[1] < 1e-4 and cl[2] < 1e-3, errors


def test_vmap_and_loop_meta_losses_agree_in_float32():
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = MLP()
    batch = SineTasks(shots=10, queries=10, seed=5).sample(8)
    results = {}
    for strategy in ("vmap", "loop"):
        learner = MAML(model, "regression", inner_lr=0.01, inner_steps=2, strategy=strategy)
        loss, metrics = learner.meta_loss(batch)
        results[strategy] = (loss, torch.autograd.grad(loss, list(model.parameters())), metrics)
        pred = learner.predict(batch.support_x, batch.support_y, batch.query_x, steps=3)
        results[strategy] += (pred,)
    (lv, gv, _, pv), (ll, gl, _, pl) = results["vmap"], results["loop"]
    assert torch.allclose(lv, ll, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gv, gl))
    assert torch.allclose(pv, pl, atol=1e-5)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_meta_sgd_gradients_reach_the_learning_rates(strategy):
    torch.manual_seed(0)
    learner = MetaSGD(MLP(), "regression", inner_steps=1, strategy=strategy)
    batch = SineTasks(shots=10, queries=10, seed=2).sample(3).to(torch.float64)
    loss, _ = learner.meta_loss(batch)
    params = list(learner.model.parameters())
    alphas = [learner.alpha[k.replace(".", "/")] for k, _ in learner.model.named_parameters()]
    grads = torch.autograd.grad(loss, params + alphas)
    lr = {k: learner.alpha[k.replace(".", "/")] for k, _ in learner.model.named_parameters()}
    _, ref = reference_meta_grad(
        mlp_forward, F.mse_loss, dict(learner.model.named_parameters()), batch, lr, 1, False
    )
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_reptile_gradient_is_theta_minus_mean_adapted(strategy):
    torch.manual_seed(0)
    learner = Reptile(MLP(), "regression", inner_lr=0.02, inner_steps=3, strategy=strategy)
    batch = SineTasks(shots=10, queries=10, seed=4).sample(5).to(torch.float64)
    loss, _ = learner.meta_loss(batch)
    params = dict(learner.model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    # Reference: plain SGD on each task's support set, with autograd, then theta - mean(W).
    adapted = []
    for t in range(batch.num_tasks):
        w = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        for _ in range(3):
            g = torch.autograd.grad(
                F.mse_loss(mlp_forward(w, batch.support_x[t]), batch.support_y[t]), list(w.values())
            )
            w = {k: (v - 0.02 * gi).detach().requires_grad_() for (k, v), gi in zip(w.items(), g)}
        adapted.append(w)
    for (k, p), g in zip(params.items(), grads):
        expected = p.detach() - torch.stack([w[k].detach() for w in adapted]).mean(0)
        assert torch.allclose(g, expected, atol=1e-10)
