"""The learners and meta-batches behind tests/fixtures/meta_gradients.json (see its generator)."""

import torch

from metalab import builders
from metalab.config import Config
from metalab.tasks import TaskBatch

# name -> config keys (beside the shared ones below); every learner is built through the builders
# from its config, so the figures cover the config -> learner path and the seeded initialisation.
CASES = {
    "maml": dict(algorithm="maml", inner_steps=2, inner_lr=0.4),
    "fomaml": dict(algorithm="fomaml", inner_steps=2, inner_lr=0.4),
    "metasgd": dict(algorithm="metasgd", inner_steps=1),
    "reptile": dict(algorithm="reptile", inner_steps=2, inner_lr=0.4),
    "anil": dict(algorithm="anil", inner_steps=2, inner_lr=0.4),
    "mamlpp": dict(algorithm="mamlpp", inner_steps=2, inner_lr=0.1, msl_iterations=100),
    "protonet": dict(algorithm="protonet"),
    "matching": dict(algorithm="matching", fce=True),
    "relation": dict(algorithm="relation"),
    "siamese": dict(algorithm="siamese"),
    "metanet": dict(algorithm="metanet"),
    "mann": dict(algorithm="mann"),
    "lstm_meta": dict(algorithm="lstm_meta", inner_steps=2, inner_lr=0.1),
    "baseline": dict(algorithm="baseline", base_classes=7),
    "baseline_pp": dict(algorithm="baseline_pp", base_classes=7),
    "pretrain": dict(algorithm="pretrain", benchmark="sine", shots=5, queries=5),
}
SHARED = dict(benchmark="omniglot", data_dir="unused", ways=3, shots=1, queries=2, seed=3)


def case_config(name: str) -> Config:
    return Config(**{**SHARED, **CASES[name]}).resolved()


def case_batch(c: Config) -> TaskBatch:
    g = torch.Generator().manual_seed(11)
    t = 2
    if c.benchmark == "sine":
        sx, qx = (
            torch.rand(t, c.shots, 1, generator=g, dtype=torch.float64),
            torch.rand(t, c.queries, 1, generator=g, dtype=torch.float64),
        )
        return TaskBatch(sx, torch.sin(3 * sx), qx, torch.sin(3 * qx))
    if c.algorithm in ("baseline", "baseline_pp"):  # a mini-batch of 6 images with global labels
        x = torch.rand(6, 1, 1, 28, 28, generator=g, dtype=torch.float64)
        y = torch.tensor([0, 3, 6, 2, 3, 5]).reshape(6, 1)
        return TaskBatch(x, y, x[:, :0], y[:, :0])
    n_s, n_q = c.ways * c.shots, c.ways * c.queries
    sx = (torch.rand(t, n_s, 1, 28, 28, generator=g, dtype=torch.float64) > 0.7).double()
    qx = (torch.rand(t, n_q, 1, 28, 28, generator=g, dtype=torch.float64) > 0.7).double()
    sy = torch.arange(c.ways).repeat_interleave(c.shots).expand(t, -1).contiguous()
    qy = torch.arange(c.ways).repeat_interleave(c.queries).expand(t, -1).contiguous()
    return TaskBatch(sx, sy, qx, qy)


def meta_gradient_summary(name: str, device: str = "cpu") -> dict:
    """{"loss": float, "params": {name: [sum, norm, dot]}} of one meta-batch's meta-gradient, with the
    learner (initialised on the CPU) and the meta-batch on `device`."""
    c = case_config(name)
    torch.manual_seed(c.seed)
    learner = builders.build_learner(c).double().to(device)
    learner.set_iteration(10)
    learner.train()
    loss, _ = learner.meta_loss(case_batch(c).to(device))
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    g = torch.Generator().manual_seed(5)
    out = {}
    for (k, p), grad in zip(params.items(), grads):
        grad = torch.zeros_like(p) if grad is None else grad
        direction = torch.randn(p.shape, generator=g, dtype=torch.float64).to(device)
        out[k] = [grad.sum().item(), grad.norm().item(), (grad * direction).sum().item()]
    return {"loss": loss.item(), "params": out}
