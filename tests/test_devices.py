"""Devices without a GPU: the config key, the errors, and device bugs caught on the CPU.

PyTorch's `meta` device stands in for a second device: its tensors have shapes and dtypes but no
data, and an operation mixing them with CPU tensors fails exactly as one mixing CUDA and CPU tensors
does. So a meta-step and a prediction of every registered algorithm with the learner and the data
on `meta` catch any tensor a learner creates on the CPU (a `torch.zeros(...)` without `device=`)
and combines with its inputs. The few host reads a learner makes (`loss.item()` for its metrics, the
number of ways from the labels) get stand-in values, as a meta tensor holds none.
"""

import dataclasses

import pytest
import torch

from helpers import run
from metalab import builders, distributed
from metalab.algorithms import algorithm_names, get_spec
from metalab.checkpoint import device_free
from metalab.config import Config, ConfigError
from metalab.data import FewShotDataset
from metalab.devices import check_precision, resolve_device
from metalab.models.fast import FastConv4, _kernels
from metalab.models.fast import model as fast_model
from metalab.parallel import TaskThreads
from metalab.run import Run, task_workers
from metalab.tasks import EpisodeSampler, SineTasks, split_classes
from metalab.tasks.batches import ClassBatchSampler
from metalab.train import learner_from_checkpoint, train
from reference_cases import SHARED, case_batch

META = torch.device("meta")
WAYS = 3


@pytest.fixture
def host_reads(monkeypatch):
    """Stand-in values for reading a meta tensor on the host: labels' max is WAYS - 1, masks hold
    something, floats are 0.5."""

    def fake(t):
        if t.dtype == torch.bool:
            return True
        return 0.5 if t.is_floating_point() else WAYS - 1

    for name, cast in (("item", None), ("__int__", int), ("__bool__", bool), ("__float__", float)):
        original = getattr(torch.Tensor, name)

        def patched(self, original=original, cast=cast):
            if not self.is_meta:
                return original(self)
            value = fake(self)
            return cast(value) if cast else value

        monkeypatch.setattr(torch.Tensor, name, patched)


def _case(algorithm, **keys):
    own = {f.name for f in dataclasses.fields(get_spec(algorithm).options)}
    values = {"base_classes": 7} if "base_classes" in own else {}
    if algorithm == "pretrain":
        values.update(benchmark="sine", shots=5, queries=5)
    values.update(keys)
    return Config(**{**SHARED, "algorithm": algorithm, **values}).resolved()


# The RL learners (no support/query examples) are covered by tests/test_rl.py.
CASES = [(name, {}) for name in algorithm_names() if "rl" not in get_spec(name).needs.kinds] + [
    ("mann", {"mann_labels": "string"})
]


def _params(learner):
    return [p for p in learner.parameters() if p.requires_grad]


@pytest.mark.parametrize(
    "algorithm,keys", CASES, ids=[f"{a}{'-' + '-'.join(k.values()) if k else ''}" for a, k in CASES]
)
def test_every_learner_keeps_its_tensors_on_the_device_of_its_inputs(algorithm, keys, host_reads):
    c = _case(algorithm, **keys)
    torch.manual_seed(0)
    learner = builders.build_learner(c).to(META, torch.float64)
    batch = case_batch(c).to(META)
    learner.train()
    loss, metrics = learner.meta_loss(batch)
    assert loss.device == META and loss.dtype == torch.float64 and isinstance(metrics["loss"], float)
    grads = torch.autograd.grad(loss, _params(learner), allow_unused=True)
    assert all(g is None or (g.device == META and g.dtype == torch.float64) for g in grads)
    learner.eval()
    with torch.no_grad():
        out = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert out.device == META and out.dtype == torch.float64


@pytest.mark.parametrize(
    "algorithm,keys", CASES, ids=[f"{a}{'-' + '-'.join(k.values()) if k else ''}" for a, k in CASES]
)
def test_every_learner_computes_in_the_dtype_of_its_inputs(algorithm, keys):
    """float64 model and data (not the default dtype): no float32 tensor made inside a learner may
    meet them in an op that refuses mixed dtypes, and everything out is float64."""
    c = _case(algorithm, **keys)
    torch.manual_seed(0)
    learner = builders.build_learner(c).double()
    batch = case_batch(c)
    loss, _ = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, _params(learner), allow_unused=True)
    assert loss.dtype == torch.float64
    assert all(g is None or g.dtype == torch.float64 for g in grads)
    learner.eval()
    with torch.no_grad():
        assert learner.predict(batch.support_x, batch.support_y, batch.query_x).dtype == torch.float64


def test_task_threads_run_on_the_learners_device(host_reads):
    c = _case("maml", inner_steps=1)
    torch.manual_seed(0)
    learner = builders.build_learner(c).to(META, torch.float64)
    engine = TaskThreads(learner, workers=2)
    try:
        engine.meta_backward(case_batch(c).to(META))
    finally:
        engine.close()
    assert all(p.grad is not None and p.grad.device == META for p in _params(learner))


def test_task_threads_scale_each_slice_as_the_loss_scaler_asks():
    """fp16's loss scaling through the threads: the gradient of the scaled loss, second order."""
    c = _case("maml", inner_steps=2, inner_lr=0.4)
    batch = case_batch(c)
    grads = []
    for scale in (None, lambda loss: loss * 1024.0):
        torch.manual_seed(0)
        learner = builders.build_learner(c).double()
        engine = TaskThreads(learner, workers=2)
        try:
            engine.meta_backward(batch, scale=scale)
        finally:
            engine.close()
        grads.append([p.grad.clone() for p in _params(learner)])
    for plain, scaled in zip(*grads):
        assert torch.allclose(scaled, 1024.0 * plain, rtol=1e-12, atol=0)


@pytest.mark.parametrize("task_threads", [1, 2])
def test_a_loss_scaled_step_takes_the_unscaled_step(task_threads, tmp_path):
    """A GradScaler's step (scale the meta-loss, backward through the inner steps, unscale, step) is
    the plain step: run here with the CPU's GradScaler, as fp16 runs it on a GPU."""
    c = Config(
        algorithm="maml", iterations=3, meta_batch=4, val_every=0, inner_steps=2, task_threads=task_threads
    )
    finals = []
    for scaled in (False, True):
        torch.manual_seed(0)
        r = Run.start(c, tmp_path / str(scaled), resume=False, log=lambda _: None)
        if scaled:
            r.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        try:
            for it in range(3):
                r.step(it)
        finally:
            r.close()
        finals.append([p.detach().clone() for p in r.learner.parameters()])
        if scaled:
            assert r.scaler.get_scale() == 2.0**12  # no inf or nan: no step skipped, scale kept
    for plain, scaled in zip(*finals):
        assert torch.allclose(plain, scaled, rtol=1e-5, atol=1e-7)


# ---- the data and the samplers ------------------------------------------------------------------


def _images(classes=10, per_class=20):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(classes * per_class, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return x, torch.arange(classes).repeat_interleave(per_class)


def test_the_episode_sampler_draws_the_same_tasks_on_every_device():
    x, y = _images()
    samplers = [EpisodeSampler(x.to(d), y, ways=5, shots=2, queries=3, seed=7) for d in ("cpu", META)]
    for _ in range(3):
        (cpu_examples, cpu_classes), (meta_examples, meta_classes) = (s.sample_indices(4) for s in samplers)
        assert torch.equal(cpu_examples, meta_examples) and torch.equal(cpu_classes, meta_classes)
    batches = [s.sample(4) for s in samplers]
    assert torch.equal(samplers[0].get_state(), samplers[1].get_state())
    for name in ("support_x", "support_y", "query_x", "query_y"):
        a, b = getattr(batches[0], name), getattr(batches[1], name)
        assert b.device == META and a.shape == b.shape and a.dtype == b.dtype


def test_a_data_set_moves_its_examples_once_and_its_samplers_follow():
    x, y = _images()
    data = FewShotDataset(x, y, [str(c) for c in range(10)], split_classes(10, 2, 3, seed=0), (1, 28, 28))
    moved = data.to(META)
    assert moved.x.device == META and moved.y.device.type == "cpu" and data.to("cpu") is data
    assert moved.nbytes == x.numel()
    batch = moved.sampler("train", ways=3, shots=1, queries=2, seed=0).sample(2)
    assert batch.support_x.device == META and batch.support_x.dtype == torch.float32
    assert batch.query_y.device == META
    rows = moved.batches("train", batch_size=4, seed=0).sample(3)
    assert rows.support_x.device == META and rows.support_y.device == META


def test_sine_tasks_and_class_batches_are_the_same_on_every_device():
    cpu, meta = SineTasks(5, 5, seed=3), SineTasks(5, 5, seed=3, device=META)
    a, b = cpu.sample(4), meta.sample(4)
    assert b.support_x.device == META and a.support_x.shape == b.support_x.shape
    assert torch.equal(cpu.get_state(), meta.get_state())
    x, y = _images()
    samplers = [ClassBatchSampler(x.to(d), y, classes=[1, 4, 6], batch_size=5, seed=2) for d in ("cpu", META)]
    a, b = (s.sample(2) for s in samplers)
    assert b.support_y.device == META and a.support_y.shape == b.support_y.shape
    assert torch.equal(samplers[0].get_state(), samplers[1].get_state())


# ---- the compiled CPU kernels step aside -----------------------------------------------------------


@pytest.mark.parametrize("norm", ["batch_stats", "batch"])
def test_conv4_fast_path_neither_builds_nor_calls_the_cpu_kernels_on_another_device(norm, monkeypatch):
    def refuse():
        raise AssertionError("the CPU kernels were asked for on another device")

    monkeypatch.setattr(fast_model, "kernels", refuse)
    model = FastConv4(out_features=5, norm=norm).to(META)
    x = torch.empty(10, 1, 28, 28, device=META)
    out = model(x)
    assert out.shape == (10, 5) and out.device == META
    grads = torch.autograd.grad(out.sum(), list(model.parameters()), create_graph=True)  # second order
    assert all(g.device == META for g in grads)


def test_kernel_status_builds_nothing(monkeypatch):
    def refuse():
        raise AssertionError("status must not build the kernels")

    monkeypatch.setattr(_kernels, "_build", refuse)
    monkeypatch.setattr(_kernels, "_state", {})
    assert _kernels.status().startswith(("built", "not built yet", "unavailable", "off"))
    monkeypatch.setenv("METALAB_KERNELS", "0")
    assert _kernels.status().startswith("off")


# ---- checkpoints -----------------------------------------------------------------------------------


def test_checkpoints_hold_cpu_tensors_and_load_onto_any_device(tmp_path):
    train(Config(iterations=2, val_every=0, meta_batch=2), tmp_path, progress=False, log=lambda _: None)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["learner"].values())
    learner, _, _ = learner_from_checkpoint(tmp_path / "checkpoint.pt", device=META)
    assert all(p.device == META for p in learner.parameters())


def test_device_free_copies_every_tensor_to_the_cpu_and_keeps_a_modules_metadata():
    state = torch.nn.BatchNorm2d(3).to(META).state_dict()
    assert all(t.device == META for t in state.values())
    # A meta tensor has no data to copy; a stand-in that records the call checks the traversal.
    nested = {"a": [torch.ones(2), (torch.zeros(1),)], "b": 3, "c": state}
    out = device_free({**nested, "c": torch.nn.BatchNorm2d(3).state_dict()})
    assert out["b"] == 3 and out["a"][1][0].device.type == "cpu"
    assert hasattr(out["c"], "_metadata")


# ---- the device key, resolution and the errors -------------------------------------------------------


def _fake_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # resolving a CUDA device sets torch's process-wide TF32 switches: restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", torch.backends.cuda.matmul.allow_tf32)


def test_devices_resolve_to_what_this_machine_has(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", ""):
        with pytest.raises(ConfigError, match="must be one of auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    _fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)  # one GPU per rank
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="cuda:3, but this machine has 2 GPU"):
        resolve_device("cuda:3")


def test_a_cuda_device_keeps_fp32_convolutions_and_products_out_of_tf32(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
    torch.backends.cuda.matmul.allow_tf32 = True
    resolve_device("cpu")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # the CPU: untouched
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_fp16_is_refused_on_the_cpu_and_bf16_is_not():
    check_precision("bf16", torch.device("cpu"))
    check_precision("fp16", torch.device("cuda", 0))
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        check_precision("fp16", torch.device("cpu"))


def test_gpus_get_no_task_threads_unless_asked():
    c = Config(algorithm="maml", benchmark="omniglot", data_dir="unused", meta_batch=8).resolved()
    learner = builders.build_learner(c)
    assert task_workers(c, learner, device=torch.device("cuda", 0)) == 1
    asked = dataclasses.replace(c, task_threads=2)
    assert task_workers(asked, learner, device=torch.device("cuda", 0)) == 2


def test_process_groups_use_nccl_on_gpus_and_gloo_on_the_cpu(monkeypatch):
    joined = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend, timeout: joined.append(backend)
    )
    assert distributed.local_rank() == 1
    distributed.setup(10, torch.device("cuda", 1))
    distributed.setup(10, "cpu")
    assert joined == ["nccl", "gloo"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--device", "cuda:3", "--iterations", "1"], "'device'"),
        (["train", "--device", "gpu", "--iterations", "1"], "must be one of auto, cpu, cuda, cuda:N, mps"),
        (["train", "--device", "mps", "--iterations", "1"], "mps"),
        (["train", "--device", "cpu", "--precision", "fp16", "--iterations", "1"], "fp16 needs a GPU"),
    ],
)
def test_an_unavailable_device_ends_with_one_line_and_status_2(argv, message, capsys, tmp_path):
    if torch.cuda.is_available() and "cuda:3" in argv and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    code, _, err = run(capsys, *argv, "--run-dir", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_eval_and_predict_take_a_device_flag(capsys, tmp_path):
    train(Config(iterations=2, val_every=0, meta_batch=2), tmp_path, progress=False, log=lambda _: None)
    code, out, _ = run(capsys, "eval", tmp_path / "checkpoint.pt", "--tasks", 5, "--device", "cpu")
    assert code == 0 and "test mse" in out
    if not torch.cuda.is_available():
        code, _, err = run(capsys, "eval", tmp_path / "checkpoint.pt", "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1
        code, _, err = run(capsys, "plot", tmp_path / "checkpoint.pt", "--device", "cuda:0")
        assert code == 2 and len(err.strip().splitlines()) == 1


def test_info_says_what_a_bug_report_needs(capsys, monkeypatch):
    def refuse():
        raise AssertionError("info must not build the kernels")

    monkeypatch.setattr(_kernels, "_build", refuse)
    monkeypatch.setattr(_kernels, "_state", {})
    code, out, _ = run(capsys, "info")
    assert code == 0
    for needed in (
        f"torch: {torch.__version__}",
        "metalab: ",
        "python: ",
        "device (auto): ",
        "cuda: available=",
        "mps: ",
        "cpu kernels: ",
        "torch threads: ",
        "cores (usable / machine): ",
        "maml",
        "protonet",
    ):
        assert needed in out, needed


def test_a_sweep_checks_every_combinations_device_before_the_first_run(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = tmp_path / "base.yaml"
    config.write_text("iterations: 1\nval_every: 0\n")
    code, out, err = run(capsys, "sweep", config, "--set", "device=cpu,cuda", "--runs", tmp_path / "runs")
    assert code == 2 and "CUDA is not available" in err and not (tmp_path / "runs").exists()
