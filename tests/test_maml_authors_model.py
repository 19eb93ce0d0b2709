"""The MAML authors' Omniglot model, piece by piece: `norm_scale: false` (batch norms with a shift
only), `inner_exclude` (parameters the inner loop keeps as they are: the authors' batch-norm shifts
live outside their fast weights) and `downsample: stride` (stride-2 convolutions and a mean over the
last map instead of max-pooling). The meta-gradients are checked against float64 references written
with plain ops (tests/reference_cases.py), as first-order MAML's are."""

import pytest
import torch
import torch.nn.functional as F

from helpers import image_batch
from metalab import builders
from metalab.config import Config, ConfigError
from metalab.models.backbones import image_backbone
from reference_cases import conv4_loss, conv4_loss_and_grads

OMNIGLOT = dict(
    benchmark="omniglot", data_dir="unused", ways=3, shots=1, queries=2, seed=3, filters=8, image_size=16
)
NORM_BIASES = [f"features.{4 * i + 1}.bias" for i in range(4)]
NORM_WEIGHTS = [f"features.{4 * i + 1}.weight" for i in range(4)]


def _built(**keys):
    c = Config(**keys).resolved()
    torch.manual_seed(c.seed)
    learner = builders.build_learner(c)
    learner.train()
    theta = {k[len("model.") :]: v.detach().clone() for k, v in learner.named_parameters()}
    return c, learner, theta


def _with_unit_scales(p: dict) -> dict:
    """The reference forward's parameters with every norm scale at 1."""
    some = next(iter(p.values()))
    return {**p, **{k: torch.ones(8, dtype=some.dtype) for k in NORM_WEIGHTS}}


def _adapt(theta: dict, x, y, lr: float, steps: int, fixed: set) -> dict:
    """Plain SGD steps on the parameters outside `fixed`; those in it stay at theta."""
    phi = {k: v.clone() for k, v in theta.items()}
    for _ in range(steps):
        _, grads = conv4_loss_and_grads(_with_unit_scales(phi), x, y)
        phi = {k: v if k in fixed else v - lr * grads[k] for k, v in phi.items()}
    return phi


def _first_order_reference(theta, batch, lr, steps, fixed):
    total = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(batch.num_tasks):
        phi = _adapt(theta, batch.support_x[t], batch.support_y[t], lr, steps, fixed)
        _, grads = conv4_loss_and_grads(_with_unit_scales(phi), batch.query_x[t], batch.query_y[t])
        total = {k: total[k] + grads[k] for k in total}
    return {k: v / batch.num_tasks for k, v in total.items()}


def _second_order_reference(theta, batch, lr, steps, fixed):
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        phi = dict(leaves)
        for _ in range(steps):
            loss = conv4_loss(_with_unit_scales(phi), batch.support_x[t], batch.support_y[t])
            moving = [k for k in phi if k not in fixed]
            grads = torch.autograd.grad(loss, [phi[k] for k in moving], create_graph=True)
            phi = {**phi, **{k: phi[k] - lr * g for k, g in zip(moving, grads)}}
        total = total + conv4_loss(_with_unit_scales(phi), batch.query_x[t], batch.query_y[t])
    grads = torch.autograd.grad(total / batch.num_tasks, list(leaves.values()))
    return dict(zip(leaves, grads))


def _meta_gradient(learner):
    """One meta-batch of 2 noise tasks and the learner's meta-gradient on it, by parameter name."""
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=1)
    learner.meta_loss(batch)[0].backward()
    return batch, {k: p.grad for k, p in learner.model.named_parameters()}


def _close(got: dict, want: dict, rtol: float) -> None:
    assert got.keys() == want.keys()
    scale = max(v.abs().max().item() for v in want.values())
    for k, w in want.items():
        assert (got[k] - w).abs().max().item() <= rtol * scale, k


def _difference(a: dict, b: dict) -> float:
    scale = max(v.abs().max().item() for v in b.values())
    return max((a[k] - b[k]).abs().max().item() for k in b) / scale


def test_norm_scale_false_leaves_a_shift_and_a_unit_scale_buffer():
    model = image_backbone(
        "conv4", in_channels=1, image_size=28, norm="batch_stats", out_features=5, norm_scale=False
    )
    names = [k for k, _ in model.named_parameters()]
    assert not any(k in names for k in NORM_WEIGHTS) and all(k in names for k in NORM_BIASES)
    state = model.state_dict()
    assert all(torch.equal(state[k], torch.ones(64)) for k in NORM_WEIGHTS)  # kept, as buffers
    full = image_backbone("conv4", in_channels=1, image_size=28, norm="batch_stats", out_features=5)
    full.load_state_dict(state)  # same keys: a checkpoint of either loads into the other's layout
    x = torch.randn(6, 1, 28, 28)
    assert torch.allclose(full(x), model(x), atol=1e-5)
    resnet = image_backbone(
        "resnet12", in_channels=3, image_size=32, norm="batch", out_features=5, norm_scale=False
    )
    assert all(
        m.weight.requires_grad is False for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("exclude", [["norm"], ["features.*.bias"]])
def test_first_order_maml_keeps_excluded_parameters_out_of_the_inner_loop(exclude):
    keys = dict(OMNIGLOT, algorithm="fomaml", inner_steps=2, inner_lr=0.4, norm_scale=False)
    c, learner, theta = _built(**keys, inner_exclude=exclude)
    # "norm" names the norms' shifts; the pattern also takes the conv biases (whose gradient is 0
    # before a batch norm, so they move the same either way).
    fixed = set(NORM_BIASES) if exclude == ["norm"] else {k for k in theta if k.startswith("features.")}
    fixed &= set(learner.fixed_names)
    assert set(NORM_BIASES) <= fixed
    batch, got = _meta_gradient(learner)
    want = _first_order_reference(theta, batch, 0.4, 2, fixed)
    _close(got, want, 1e-9)
    # The reference that adapts the shifts too lands far from it.
    assert _difference(_first_order_reference(theta, batch, 0.4, 2, set()), want) > 1e-4


@pytest.mark.usefixtures("float64")
def test_second_order_maml_with_norms_outside_the_inner_loop_matches_autograd_reference():
    keys = dict(OMNIGLOT, algorithm="maml", inner_steps=2, inner_lr=0.4, norm_scale=False)
    c, learner, theta = _built(**keys, inner_exclude=["norm"])
    batch, got = _meta_gradient(learner)
    want = _second_order_reference(theta, batch, 0.4, 2, set(NORM_BIASES))
    _close(got, want, 1e-9)
    assert _difference(_second_order_reference(theta, batch, 0.4, 2, set()), want) > 1e-4


@pytest.mark.usefixtures("float64")
def test_prediction_adapts_only_the_parameters_the_inner_loop_may_change():
    keys = dict(OMNIGLOT, algorithm="fomaml", inner_lr=0.4, eval_inner_steps=3, norm_scale=False)
    c, learner, theta = _built(**keys, inner_exclude=["norm"])
    learner.eval()
    batch = image_batch(tasks=2, ways=3, shots=1, queries=2, size=16, seed=2)
    out = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    for t in range(batch.num_tasks):
        phi = _adapt(theta, batch.support_x[t], batch.support_y[t], 0.4, 3, set(NORM_BIASES))
        x = batch.query_x[t]
        for i in range(4):  # the reference forward up to the logits
            p = _with_unit_scales(phi)
            x = F.conv2d(x, p[f"features.{4 * i}.weight"], p[f"features.{4 * i}.bias"], padding=1)
            mean, var = (
                x.mean(dim=(0, 2, 3), keepdim=True),
                x.var(dim=(0, 2, 3), unbiased=False, keepdim=True),
            )
            x = (x - mean) / torch.sqrt(var + 1e-5) + p[f"features.{4 * i + 1}.bias"][:, None, None]
            x = F.max_pool2d(x.clamp_min(0), 2)
        logits = x.flatten(1) @ phi["head.weight"].T + phi["head.bias"]
        assert torch.allclose(out[t], logits, atol=1e-9)
    assert all(torch.equal(v, theta[k]) for k, v in learner.model.named_parameters())  # untouched


@pytest.mark.parametrize(
    "keys,message",
    [
        (dict(inner_exclude=["features.99.*"]), "names none of the model's trainable parameters"),
        (dict(inner_exclude=["*"]), "names every parameter"),
        (dict(benchmark="sine", data_dir=None, norm_scale=False, ways=5), "apply to image benchmarks"),
    ],
)
def test_bad_exclusions_are_refused_with_the_reason(keys, message):
    base = dict(OMNIGLOT, algorithm="fomaml")
    base.update(keys)
    with pytest.raises((ConfigError, ValueError), match=message):
        builders.build_learner(Config(**{k: v for k, v in base.items() if v is not None}).resolved())


def test_anil_has_no_inner_exclude_key():
    with pytest.raises((ConfigError, TypeError, ValueError), match="inner_exclude"):
        builders.build_learner(Config(**OMNIGLOT, algorithm="anil", inner_exclude=["norm"]).resolved())


def _strided_loss(p: dict, x, y):
    """The authors' Omniglot model written out: [conv 3x3 stride 2, batch-statistics norm with a
    shift only, ReLU] four times, the mean over the last map, a linear head; cross-entropy."""
    for i in range(4):
        x = F.conv2d(x, p[f"features.{3 * i}.weight"], p[f"features.{3 * i}.bias"], stride=2, padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x = ((x - mean) / torch.sqrt(var + 1e-5) + p[f"features.{3 * i + 1}.bias"][:, None, None]).clamp_min(
            0
        )
    logits = x.mean(dim=(2, 3)) @ p["head.weight"].T + p["head.bias"]
    return -logits.log_softmax(-1).gather(1, y[:, None]).mean()


def test_strided_conv4_maps_28_pixels_to_a_2x2_map_and_64_features():
    model = image_backbone(
        "conv4", in_channels=1, image_size=28, norm="batch_stats", out_features=5, downsample="stride"
    )
    assert type(model).__name__ == "Conv4"  # the fused paths cover the pooled blocks only
    x = torch.randn(4, 1, 28, 28)
    assert model.features[:-2](x).shape == (4, 64, 2, 2) and model.feature_dim == 64
    assert model(x).shape == (4, 5)
    with pytest.raises(ValueError, match="downsample applies to conv4"):
        image_backbone("resnet12", in_channels=3, image_size=32, norm="batch", downsample="stride")
    with pytest.raises(ConfigError, match="'downsample' applies to backbone conv4"):
        Config(**OMNIGLOT, algorithm="fomaml", backbone="resnet12", downsample="stride").resolved()


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("algorithm", ["fomaml", "maml"])
def test_the_authors_model_meta_gradient_matches_a_plain_reference(algorithm):
    keys = dict(OMNIGLOT, algorithm=algorithm, inner_steps=1, inner_lr=2.0, norm_scale=False)
    c, learner, theta = _built(**keys, downsample="stride", inner_exclude=["norm"])
    shifts = {f"features.{3 * i + 1}.bias" for i in range(4)}
    assert set(learner.fixed_names) == shifts
    batch, got = _meta_gradient(learner)
    leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        loss = _strided_loss(leaves, batch.support_x[t], batch.support_y[t])
        moving = [k for k in leaves if k not in shifts]
        grads = torch.autograd.grad(loss, [leaves[k] for k in moving], create_graph=algorithm == "maml")
        step = {k: g if algorithm == "maml" else g.detach() for k, g in zip(moving, grads)}
        phi = {k: v - 2.0 * step[k] if k in step else v for k, v in leaves.items()}
        total = total + _strided_loss(phi, batch.query_x[t], batch.query_y[t])
    want = dict(zip(leaves, torch.autograd.grad(total / batch.num_tasks, list(leaves.values()))))
    _close(got, want, 1e-9)


def test_maml_init_draws_xavier_convolutions_and_a_standard_normal_head():
    torch.manual_seed(0)
    model = image_backbone(
        "conv4", in_channels=1, image_size=28, norm="batch_stats", out_features=5, init="maml"
    )
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        fan_in, fan_out = conv.weight[0].numel(), conv.out_channels * conv.weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    head = model.head.weight
    assert 0.85 < head.std().item() < 1.15 and torch.equal(model.head.bias, torch.zeros(5))
    # PyTorch's default head is about ten times smaller.
    plain = image_backbone("conv4", in_channels=1, image_size=28, norm="batch_stats", out_features=5)
    assert plain.head.weight.std().item() < 0.2
    with pytest.raises(ConfigError, match="'init' applies to backbone conv4"):
        Config(**OMNIGLOT, algorithm="fomaml", backbone="resnet12", init="maml").resolved()
