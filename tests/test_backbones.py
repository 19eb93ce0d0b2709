"""The image backbones (`backbone: conv4 | resnet12 | resnet18`): every image learner takes a
meta-step on each ResNet, MAML's second-order meta-gradient through ResNet-12 against a float64
per-task loop, the norm each family gets, DropBlock, Conv-4's fast path at 32 and 84 px on colour
images, the config's refusals, and a checkpoint rebuilt by `metalab predict`.

The ResNets run at small widths (`filters`: the first width, the others scaled with it) on small
images to stay fast; their structure is the real one."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from helpers import assert_same_derivatives, run
from metalab.algorithms import get_spec, specs
from metalab.builders import build_learner
from metalab.config import Config, ConfigError
from metalab.models import BatchStatNorm2d, Conv4, FastConv4
from metalab.models.backbones import activation_floats, image_backbone
from metalab.models.resnet import DropBlock, ResNet12, ResNet18
from metalab.tasks import TaskBatch
from metalab.train import learner_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

RESNETS = ("resnet12", "resnet18")
# Every algorithm that classifies images with the backbone the config chooses.
IMAGE_LEARNERS = [s.name for s in specs() if "classification" in s.needs.kinds and s.needs.backbone]
_NORMS = (BatchStatNorm2d, nn.BatchNorm2d)


def _own_keys(algorithm, **values):
    own = {f.name for f in dataclasses.fields(get_spec(algorithm).options)}
    return {k: v for k, v in values.items() if k in own}


def _config(algorithm, backbone, **keys):
    base = dict(
        algorithm=algorithm,
        benchmark="folder",
        data_dir="unused",
        channels=3,
        image_size=24,
        ways=2,
        shots=1,
        queries=1,
        meta_batch=2,
        backbone=backbone,
        filters=8,
    )
    base.update(_own_keys(algorithm, inner_steps=1, inner_lr=0.1, base_classes=4))
    base.update(keys)
    return Config(**base).resolved()


def _batch(tasks=2, ways=2, shots=1, queries=1, size=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, ways * shots, 3, size, size, generator=g, dtype=dtype)
    qx = torch.randn(tasks, ways * queries, 3, size, size, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy)


def _resnets(learner):
    return [m for m in learner.modules() if isinstance(m, (ResNet12, ResNet18))]


@pytest.mark.parametrize("backbone", RESNETS)
@pytest.mark.parametrize("algorithm", IMAGE_LEARNERS)
def test_every_image_learner_takes_a_meta_step_on_a_resnet(algorithm, backbone):
    torch.manual_seed(0)
    # lstm_meta's coordinate-wise LSTM runs over every weight: the narrowest widths keep it quick.
    learner = build_learner(_config(algorithm, backbone, filters=4 if algorithm == "lstm_meta" else 8))
    nets = _resnets(learner)
    assert len(nets) == 1, f"{algorithm} did not build the {backbone} it was asked for"
    loss, metrics = learner.meta_loss(_batch())
    assert torch.isfinite(loss) and all(v == v for v in metrics.values())
    loss.backward()
    for name, p in nets[0].named_parameters():
        if algorithm == "mamlpp" and isinstance(_owner(nets[0], name), _NORMS):
            continue  # MAML++'s per-step norm affines stand in for the backbone's own (per_step_bn)
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{algorithm}: no gradient for {name}"
    convs = [m.weight.grad for m in nets[0].modules() if isinstance(m, nn.Conv2d)]
    assert all(g is not None and g.abs().sum() > 0 for g in convs), f"{algorithm}: a conv got no gradient"


def _owner(model, parameter_name):
    return model.get_submodule(parameter_name.rsplit(".", 1)[0])


def _reference_meta_gradient(model, params, batch, inner_lr, steps):
    """Second-order MAML's meta-gradient by an explicit per-task loop: every inner step's gradient
    by torch.autograd.grad with create_graph=True, mean query loss over tasks."""
    names = list(params)
    total = 0.0
    for t in range(batch.support_x.shape[0]):
        p = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, p, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, [p[k] for k in names], create_graph=True)
            p = {k: p[k] - inner_lr * g for k, g in zip(names, grads)}
        total = total + F.cross_entropy(functional_call(model, p, (batch.query_x[t],)), batch.query_y[t])
    total = total / batch.support_x.shape[0]
    return dict(zip(names, torch.autograd.grad(total, [params[k] for k in names])))


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_maml_meta_gradient_through_resnet12_matches_a_float64_loop(strategy):
    c = _config(
        "maml", "resnet12", image_size=16, filters=4, shots=2, inner_steps=2, inner_lr=0.3, strategy=strategy
    )
    torch.manual_seed(0)
    learner = build_learner(c)
    assert learner.strategy == strategy
    batch = _batch(shots=2, queries=2, size=16, seed=1)
    model64 = copy.deepcopy(learner.model).double()
    params64 = {k: v.detach().clone().requires_grad_(True) for k, v in model64.named_parameters()}
    batch64 = TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    want = _reference_meta_gradient(model64, params64, batch64, 0.3, 2)
    largest = max(g.abs().max().item() for g in want.values())
    assert largest > 0

    # The learner in float64 is the reference to rounding; in float32 to float32's precision.
    for dtype, tolerance in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
        lrn = copy.deepcopy(learner).to(dtype)
        lrn.zero_grad()
        b = TaskBatch(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y)
        lrn.meta_loss(b)[0].backward()
        for name, p in lrn.model.named_parameters():
            got, ref = p.grad.double(), want[name]
            assert torch.allclose(got, ref, rtol=tolerance, atol=tolerance * largest), (dtype, name)


def test_each_family_gets_its_batch_norm():
    maml = build_learner(_config("maml", "resnet12"))
    proto = build_learner(_config("protonet", "resnet12"))
    base = build_learner(_config("baseline", "resnet18"))
    metanet = build_learner(_config("metanet", "resnet18"))
    for learner, kind in ((maml, BatchStatNorm2d), (metanet, BatchStatNorm2d)):
        norms = [m for m in _resnets(learner)[0].modules() if isinstance(m, _NORMS)]
        assert norms and all(type(m) is kind for m in norms)
    for learner in (proto, base):
        norms = [m for m in _resnets(learner)[0].modules() if isinstance(m, _NORMS)]
        assert norms and all(type(m) is nn.BatchNorm2d and m.track_running_stats for m in norms)
    # Running statistics move in training mode; batch statistics keep none.
    before = proto.encoder.features[0].bn1.running_mean.clone()
    proto.train()
    proto.meta_loss(_batch())
    assert not torch.equal(before, proto.encoder.features[0].bn1.running_mean)
    assert not any(b.numel() for b in maml.model.buffers())
    # Batch statistics: a MAML model answers the same in train and eval mode.
    x = torch.randn(4, 3, 24, 24)
    maml.model.train()
    a = maml.model(x)
    maml.model.eval()
    assert torch.equal(a, maml.model(x))


def test_relation_compares_resnet_feature_maps():
    learner = build_learner(_config("relation", "resnet12", image_size=32))
    assert learner.encoder(torch.zeros(2, 3, 32, 32)).shape == (2, 80, 2, 2)  # before the pool
    batch = _batch(size=32)
    scores = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert scores.shape == (2, 2, 2) and ((scores >= 0) & (scores <= 1)).all()


def test_drop_block_is_identity_in_eval_and_drops_about_its_rate_in_training():
    torch.manual_seed(0)
    x = torch.rand(64, 16, 12, 12) + 1.0  # no zeros of its own
    for rate, size in ((0.1, 3), (0.3, 2), (0.1, 1)):
        drop = DropBlock(rate, size)
        drop.eval()
        assert drop(x) is x
        drop.train()
        y = drop(x)
        dropped = (y == 0).float().mean().item()
        # Overlapping blocks drop a little less than the rate; the kept values are scaled up.
        assert rate * 0.75 < dropped < rate * 1.05, (rate, size, dropped)
        assert abs(y.mean().item() / x.mean().item() - 1) < 0.02
        zeros = (y[0, 0] == 0).float()
        if size > 1:  # whole blocks: a dropped value has a dropped neighbour
            pad = F.pad(zeros, (1, 1, 1, 1))
            neighbours = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
            assert (neighbours[zeros.bool()] > 0).all()
    # In a ResNet-12: eval mode is the model without DropBlock, training mode is not.
    torch.manual_seed(0)
    with_drop = ResNet12(widths=(4, 10, 20, 40), drop_block=0.1, image_size=32)
    plain = ResNet12(widths=(4, 10, 20, 40), image_size=32)
    plain.load_state_dict(with_drop.state_dict())
    assert [type(b.drop).__name__ for b in with_drop.features[:4]] == ["Dropout"] * 2 + ["DropBlock"] * 2
    assert with_drop.features[2].drop.block_size == 2  # 5 at 84 px, scaled to 32 px
    x = torch.randn(8, 3, 32, 32)
    with_drop.eval(), plain.eval()
    assert torch.equal(with_drop(x), plain(x))
    with_drop.train(), plain.train()
    assert not torch.equal(with_drop(x), plain(x))


def test_resnet_shapes_and_paper_widths():
    r12 = ResNet12(image_size=84)
    assert r12.feature_dim == 640 and r12.feature_map_size == 5
    assert [b.conv1.out_channels for b in r12.features[:4]] == [64, 160, 320, 640]
    assert sum(p.numel() for p in r12.parameters()) == pytest.approx(12.4e6, rel=0.01)
    r18 = ResNet18(image_size=84)
    assert r18.feature_dim == 512 and r18.feature_map_size == 3
    assert sum(p.numel() for p in r18.parameters()) == pytest.approx(11.2e6, rel=0.01)
    assert image_backbone("resnet18", in_channels=3, image_size=32, norm="batch").stem == "cifar"
    assert image_backbone("resnet18", in_channels=3, image_size=84, norm="batch").stem == "imagenet"
    small = image_backbone("resnet18", in_channels=3, image_size=32, norm="batch", filters=4, out_features=5)
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == (2, 5) and small.features_map(x).shape == (2, 32, 4, 4)
    assert torch.equal(small(x), small.head(small.features(x)))
    with pytest.raises(ValueError, match="at least 16x16"):
        ResNet12(image_size=12)
    # The memory estimate's activation count grows with the image's area.
    assert activation_floats("resnet12", 84) > 6 * activation_floats("resnet12", 32)


@pytest.mark.parametrize("size", [32, 84])
def test_conv4_fast_path_on_colour_images_at_32_and_84_px(size, float64):
    torch.manual_seed(0)
    for norm in ("batch_stats", "batch"):
        plain = Conv4(in_channels=3, hidden=8, image_size=size, out_features=5, norm=norm)
        fast = FastConv4(in_channels=3, hidden=8, image_size=size, out_features=5, norm=norm)
        fast.load_state_dict(plain.state_dict())
        assert plain.feature_dim == 8 * (size // 16) ** 2
        assert_same_derivatives(fast, plain, torch.randn(4, 3, size, size), 1e-9)
    # MAML's miniImageNet Conv-4: 32 filters, 800 features at 84 px.
    c = _config("maml", "conv4", image_size=84, filters=32)
    model = build_learner(c).model
    assert isinstance(model, FastConv4) and model.feature_dim == 800


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(benchmark="sine", backbone="resnet12"), "apply to image benchmarks"),
        (dict(algorithm="mann", backbone="resnet18"), "do not apply to mann, whose model is its own"),
        (dict(backbone="resnet18", drop_block=0.1), "'drop_block' applies to backbone resnet12"),
        (dict(backbone="resnet12", drop_block=1.0), "'drop_block' must be in \\[0, 1\\)"),
        (dict(backbone="resnet12", filters=0), "'filters' must be >= 1"),
        (dict(backbone="resnet12", drop_block=0.1, strategy="vmap"), "use strategy loop"),
        (dict(backbone="resnet50"), "'backbone' must be one of conv4, resnet12, resnet18"),
    ],
)
def test_backbone_keys_are_refused_where_they_cannot_apply(keys, message):
    base = dict(algorithm="maml", benchmark="folder", data_dir="unused", channels=3, image_size=32)
    with pytest.raises(ConfigError, match=message):
        Config(**{**base, **keys}).resolved()


def test_resnet12_checkpoint_is_rebuilt_by_predict_and_eval(tmp_path, capsys):
    from test_own_data import make_folder, support_and_queries

    root = make_folder(tmp_path / "d", classes=9, per_class=4, rgb=True)
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        *("train", "--benchmark", "folder", "--data-dir", root, "--channels", "3", "--image-size", "16"),
        *("--algorithm", "protonet", "--backbone", "resnet12", "--filters", "4", "--drop-block", "0.1"),
        *("--ways", "2", "--shots", "1", "--queries", "1", "--val-classes", "2", "--test-classes", "2"),
        *("--iterations", "2", "--meta-batch", "2", "--test-tasks", "4", "--run-dir", run_dir),
        *("--quiet", "--threads", "1", "--val-every", "0"),
    )
    assert code == 0, err
    learner, c, _ = learner_from_checkpoint(run_dir / "checkpoint.pt")
    assert (c.backbone, c.filters, c.drop_block) == ("resnet12", 4, 0.1)
    assert isinstance(learner.encoder, ResNet12) and learner.encoder.feature_dim == 40
    support, queries, _ = support_and_queries(root, tmp_path, ["class00", "class03", "class05"])
    code, out, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert code == 0, err
    assert "class00" in out and len(out.strip().splitlines()) == 2 + 3
    code, out, err = run(capsys, "eval", run_dir / "checkpoint.pt", "--tasks", "3")
    assert code == 0 and "accuracy" in out, err
