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


# --- independent float64 references for first-order MAML and Reptile -----------------------------
# Written with plain tensor ops: the MLP's gradients by hand (no autograd at all), Conv-4's forward
# by hand (autograd only differentiates that forward, at leaf tensors, so no graph reaches back
# through an inner step). Neither uses functional_call, the learners' update rules or the
# backbones' fused paths.


def mlp_loss_and_grads(p: dict, x, y) -> tuple:
    """The sine MLP (1-40-40-1, ReLU) under the mean squared error, and its gradients by hand.

    Args:
        p: "net.{0,2,4}.{weight,bias}" -> tensors; x, y: of shape (n, 1).

    Returns:
        (loss, {name: gradient}).
    """
    z1 = x @ p["net.0.weight"].T + p["net.0.bias"]
    h1 = z1.clamp_min(0)
    z2 = h1 @ p["net.2.weight"].T + p["net.2.bias"]
    h2 = z2.clamp_min(0)
    out = h2 @ p["net.4.weight"].T + p["net.4.bias"]
    loss = ((out - y) ** 2).mean()
    d_out = 2 * (out - y) / out.numel()
    d_z2 = (d_out @ p["net.4.weight"]) * (z2 > 0)
    d_z1 = (d_z2 @ p["net.2.weight"]) * (z1 > 0)
    grads = {
        "net.4.weight": d_out.T @ h2,
        "net.4.bias": d_out.sum(0),
        "net.2.weight": d_z2.T @ h1,
        "net.2.bias": d_z2.sum(0),
        "net.0.weight": d_z1.T @ x,
        "net.0.bias": d_z1.sum(0),
    }
    return loss, grads


def conv4_loss(p: dict, x, y):
    """Conv-4 (conv, batch-statistics norm with affine, ReLU, 2x2 max-pool, four times; a linear
    head) under cross-entropy, written out with plain ops."""
    import torch.nn.functional as F

    for i in range(4):
        x = F.conv2d(x, p[f"features.{4 * i}.weight"], p[f"features.{4 * i}.bias"], padding=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-5)
        x = (
            x * p[f"features.{4 * i + 1}.weight"][:, None, None]
            + p[f"features.{4 * i + 1}.bias"][:, None, None]
        )
        x = F.max_pool2d(x.clamp_min(0), 2)
    logits = x.flatten(1) @ p["head.weight"].T + p["head.bias"]
    return -logits.log_softmax(-1).gather(1, y[:, None]).mean()


def conv4_loss_and_grads(p: dict, x, y) -> tuple:
    """`conv4_loss` and its gradients at `p`, taken as constants (fresh leaves)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    loss = conv4_loss(leaves, x, y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), {k: g.detach() for k, g in zip(leaves, grads)}


def sgd_adapt(loss_and_grads, theta: dict, x, y, lr: float, steps: int) -> dict:
    """phi after `steps` plain SGD steps on (x, y) from theta: phi <- phi - lr * grad L(phi)."""
    phi = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        _, grads = loss_and_grads(phi, x, y)
        phi = {k: v - lr * grads[k] for k, v in phi.items()}
    return phi


def first_order_meta_gradient(loss_and_grads, theta: dict, batch, lr: float, steps: int) -> dict:
    """First-order MAML (Finn et al. 2017, section 5.2): the mean over tasks of the query loss's
    gradient at the adapted weights phi_i, with no term through the inner steps."""
    total = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(batch.num_tasks):
        phi = sgd_adapt(loss_and_grads, theta, batch.support_x[t], batch.support_y[t], lr, steps)
        _, grads = loss_and_grads(phi, batch.query_x[t], batch.query_y[t])
        total = {k: total[k] + grads[k] for k in total}
    return {k: v / batch.num_tasks for k, v in total.items()}


def reptile_target(loss_and_grads, theta: dict, batch, lr: float, steps: int) -> dict:
    """Reptile's direction (Nichol et al. 2018, algorithm 2): mean over tasks of (phi_i - theta),
    phi_i from `steps` SGD steps on task i's support set."""
    moves = {k: torch.zeros_like(v) for k, v in theta.items()}
    for t in range(batch.num_tasks):
        phi = sgd_adapt(loss_and_grads, theta, batch.support_x[t], batch.support_y[t], lr, steps)
        moves = {k: moves[k] + (phi[k] - theta[k].detach()) for k in moves}
    return {k: v / batch.num_tasks for k, v in moves.items()}


def second_order_meta_gradient(loss_of, theta: dict, batch, lr: float, steps: int) -> dict:
    """Second-order MAML's meta-gradient from the same plain forward (`loss_of(p, x, y)`): autograd
    through the inner SGD steps. Only to show that the first-order tests can tell the two apart."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}
    total = 0.0
    for t in range(batch.num_tasks):
        phi = dict(leaves)
        for _ in range(steps):
            loss = loss_of(phi, batch.support_x[t], batch.support_y[t])
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            phi = {k: v - lr * g for (k, v), g in zip(phi.items(), grads)}
        total = total + loss_of(phi, batch.query_x[t], batch.query_y[t])
    grads = torch.autograd.grad(total / batch.num_tasks, list(leaves.values()))
    return dict(zip(leaves, grads))
