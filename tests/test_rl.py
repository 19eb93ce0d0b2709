"""Meta-RL (metalab.rl): the environments by hand, the policy-gradient estimator against an analytic
gradient, TRPO's step, the second-order meta-gradient against a float64 reference, the generic
loop (checkpoint, resume, eval, plot, errors) and a short navigation run that learns to adapt."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import run
from metalab import builders
from metalab.config import Config
from metalab.functional import named_params
from metalab.rl import (
    GaussianMLPPolicy,
    Navigation2D,
    RLTasks,
    conjugate_gradient,
    gaussian_kl,
    gaussian_log_prob,
    mujoco_missing,
    trpo_step,
)
from metalab.rl.learner import MAMLRL, _per_task
from metalab.rl.returns import advantages, discounted_returns, gae
from metalab.rl.trpo import kl_fisher_product
from metalab.train import learner_from_checkpoint, train


def tiny(**keys) -> Config:
    values = dict(
        benchmark="navigation",
        algorithm="maml_rl",
        hidden=[16, 16],
        shots=4,
        queries=4,
        meta_batch=3,
        horizon=20,
        iterations=2,
        val_every=0,
        checkpoint_every=1,
        log_every=1,
        test_tasks=4,
        threads=1,
        fisher="post_update",
    )
    values.update(keys)
    return Config(**values)


# --- environments -------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", ["distance", "squared"])
def test_navigation_moves_clips_rewards_and_ends_at_the_goal(reward):
    env = Navigation2D(reward, horizon=100)
    obs = env.reset(torch.tensor([[0.3, -0.2], [0.05, 0.1]]))
    assert torch.equal(obs, torch.zeros(2, 2))
    # 0.1 * a, clipped to [-0.1, 0.1]: (0.5, 2.0) moves by (0.05, 0.1).
    obs, r, done = env.step(torch.tensor([[0.5, 2.0], [0.5, 2.0]]))
    assert torch.allclose(obs, torch.tensor([[0.05, 0.1], [0.05, 0.1]]))
    squared = (0.05 - 0.3) ** 2 + (0.1 + 0.2) ** 2
    expected = -squared if reward == "squared" else -math.sqrt(squared)
    assert r[0].item() == pytest.approx(expected, rel=1e-6) and not done[0]
    assert done[1] and r[1].item() == pytest.approx(0.0, abs=1e-7)  # within 0.01 of its goal
    obs, _, _ = env.step(torch.tensor([[-3.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(obs[0], torch.tensor([-0.05, 0.1]))


@pytest.mark.skipif(mujoco_missing() is not None, reason=str(mujoco_missing()))
@pytest.mark.parametrize("task", ["vel", "dir"])
def test_halfcheetah_follows_gymnasium_and_its_reward_formula(task):
    import gymnasium

    from metalab.rl import HalfCheetah
    from metalab.rl.envs import quiet_mujoco

    with quiet_mujoco():
        reference = gymnasium.make("HalfCheetah-v5").unwrapped
    reference.reset(seed=3)
    env = HalfCheetah(task, horizon=200)
    goal = 1.3 if task == "vel" else -1.0
    env.reset(torch.tensor([[goal]]), torch.Generator().manual_seed(0))
    env.set_state(reference.data.qpos.copy()[None], reference.data.qvel.copy()[None])
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1.5, 1.5, size=6)  # beyond [-1, 1]: both clip
        want_obs, _, _, _, info = reference.step(np.clip(action, -1, 1))
        obs, reward, done = env.step(torch.tensor(action[None]))
        assert np.allclose(obs[0].numpy(), want_obs, atol=1e-5)
        v = info["x_velocity"]
        assert env.velocity[0] == pytest.approx(v, abs=1e-9)
        control = 0.05 * np.sum(np.clip(action, -1, 1) ** 2)
        expected = -abs(v - goal) - control if task == "vel" else goal * v - control
        assert reward[0].item() == pytest.approx(expected, abs=1e-5) and not done[0]


def test_returns_and_gae_by_hand():
    rewards = torch.tensor([[[1.0, 2.0, 3.0, 0.0]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])  # an episode that ended after 3 steps
    ret = discounted_returns(rewards, mask, 0.5)
    assert torch.allclose(ret, torch.tensor([[[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]]))
    values = torch.tensor([[[0.5, 1.0, 2.0, 9.0]]])
    adv = gae(rewards, values, mask, 0.5, 1.0)
    assert torch.allclose(adv, ret - values * mask)  # lambda = 1: the return minus the baseline
    d = rewards + 0.5 * torch.tensor([[[1.0, 2.0, 0.0, 0.0]]]) - values * mask
    adv0 = gae(rewards, values, mask, 0.5, 0.0)
    assert torch.allclose(adv0, d * mask)


# --- the policy-gradient estimator -----------------------------------------------------------------


class Bandit:
    """One step, no state: reward -(a - 2)^2."""

    obs_dim, act_dim, horizon = 1, 1, 1

    def reset(self, tasks, generator=None):
        return torch.zeros(tasks.shape[0], 1)

    def step(self, actions):
        return (
            torch.zeros(actions.shape[0], 1),
            -((actions[:, 0] - 2.0) ** 2),
            torch.ones(actions.shape[0]) > 0,
        )


def test_policy_gradient_estimate_matches_the_analytic_gradient():
    """E[-grad inner loss] with the baseline equals grad J, J(mu, s) = -((mu - 2)^2 + exp(2 s))."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(1, 1, hidden=(), init_std=0.8).double()
    with torch.no_grad():
        policy.layers[0].bias.fill_(0.5)
    learner = MAMLRL(policy, Bandit())
    params = named_params(policy)
    episodes = learner.rollout(
        {k: v.detach() for k, v in params.items()},
        torch.zeros(4, 1),
        50_000,
        torch.Generator().manual_seed(1),
    )
    adv = advantages(episodes, 0.99, normalize=False)
    grads = torch.autograd.grad(
        learner._inner_loss(_per_task(params, 4), episodes, adv), list(params.values())
    )
    per = dict(zip(params, grads))
    mu, log_std = 0.5, math.log(0.8)
    d_mu, d_log_std = -2 * (mu - 2.0), -2 * math.exp(2 * log_std)
    # The inner loss sums the tasks' losses: 4 independent estimates of -grad J.
    assert -per["layers.0.bias"].item() / 4 == pytest.approx(d_mu, rel=0.03)
    assert -per["log_std"].item() / 4 == pytest.approx(d_log_std, rel=0.05)


# --- TRPO -------------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    assert torch.allclose(conjugate_gradient(lambda v: a @ v, b, iterations=20), torch.linalg.solve(a, b))


def test_trpo_step_keeps_the_kl_bound_and_improves_the_surrogate():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden=(8,)).double()
    obs = torch.randn(1, 200, 3, dtype=torch.float64)
    with torch.no_grad():
        mean0, log_std0 = (t.clone() for t in policy.distribution(dict(policy.named_parameters()), obs))
        actions = mean0 + log_std0.exp() * torch.randn_like(mean0)
        logp0 = gaussian_log_prob(mean0, log_std0, actions)
    adv = actions.sum(-1) - actions.sum(-1).mean()  # larger actions are better
    params = list(policy.parameters())
    start = [p.detach().clone() for p in params]

    def surrogate():
        mean, log_std = policy.distribution(dict(policy.named_parameters()), obs)
        ratio = torch.exp(gaussian_log_prob(mean, log_std, actions) - logp0)
        return -(ratio * adv).mean(), gaussian_kl(mean0, log_std0, mean, log_std).mean()

    for max_kl in (0.01, 0.001):
        with torch.no_grad():
            for p, p0 in zip(params, start):
                p.copy_(p0)
        loss, kl = surrogate()
        stats = trpo_step(params, loss, kl_fisher_product(params, kl, 1e-5), surrogate, max_kl=max_kl)
        new_loss, new_kl = surrogate()
        assert stats["backtracks"] <= 15 and stats["kl"] == pytest.approx(new_kl.item())
        assert new_kl.item() <= max_kl and new_loss.item() < loss.item() - 1e-4
        # A step near the bound: the quadratic model of the KL is close on this smooth problem.
        assert new_kl.item() > 0.3 * max_kl


# --- the meta-gradient ------------------------------------------------------------------------------


def _reference_meta_loss(policy, sampled, inner_lr, first_order=False):
    """The post-update surrogate by a per-task loop with torch.distributions and explicit
    torch.autograd.grad(create_graph=True), written independently of metalab.rl."""
    names = [n for n, _ in policy.named_parameters()]
    theta = [p for _, p in policy.named_parameters()]
    layers = (len(names) - 1) // 2

    def dist(ps, obs):
        h = obs
        for i in range(layers):
            h = F.linear(h, ps[2 * i], ps[2 * i + 1])
            h = torch.relu(h) if i < layers - 1 else h
        return torch.distributions.Normal(h, ps[-1].exp())

    order = [names.index(f"layers.{i}.{w}") for i in range(layers) for w in ("weight", "bias")] + [
        names.index("log_std")
    ]
    theta = [theta[i] for i in order]
    episodes, adv_pre = sampled.support[0]
    obs_pre, act_pre, mask_pre = episodes.flat()
    adv_pre = adv_pre.reshape(mask_pre.shape)
    losses = []
    for i in range(obs_pre.shape[0]):
        logp = dist(theta, obs_pre[i]).log_prob(act_pre[i]).sum(-1)
        inner = -(logp * adv_pre[i] * mask_pre[i]).sum() / mask_pre[i].sum()
        grads = torch.autograd.grad(inner, theta, create_graph=not first_order)
        grads = [g.detach() for g in grads] if first_order else grads
        adapted = [p - inner_lr * g for p, g in zip(theta, grads)]
        logp_post = dist(adapted, sampled.obs[i]).log_prob(sampled.actions[i]).sum(-1)
        ratio = torch.exp(logp_post - sampled.old_logp[i])
        losses.append(-(ratio * sampled.adv[i] * sampled.mask[i]).sum() / sampled.mask[i].sum())
    return torch.stack(losses).mean(), theta


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_a_float64_reference(first_order):
    torch.manual_seed(0)
    c = tiny(meta_batch=3, first_order=first_order).resolved()
    learner = builders.build_learner(c).double()
    with torch.no_grad():  # biases off 0: the episodes start at the origin, on every ReLU's kink
        for layer in learner.policy.layers:
            layer.bias.normal_(0, 0.1)
    loss, _ = learner.meta_loss(RLTasks("navigation", seed=5).sample(3))
    sampled = learner._sampled
    params = list(learner.policy.parameters())
    ours = dict(zip([n for n, _ in learner.policy.named_parameters()], torch.autograd.grad(loss, params)))
    ref_loss, theta = _reference_meta_loss(learner.policy, sampled, c.options.inner_lr, first_order)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    ref = torch.autograd.grad(ref_loss, theta)
    named = {n: p for n, p in learner.policy.named_parameters()}
    for g, p in zip(ref, theta):
        name = next(n for n, q in named.items() if q is p)
        assert torch.allclose(ours[name], g, atol=1e-10, rtol=1e-8), name
    # and a finite difference of the whole objective in float64 along the gradient
    direction = [ours[n] / torch.cat([v.flatten() for v in ours.values()]).norm() for n in named]
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(named.values(), direction):
            p.add_(eps * d)
    up, _ = _reference_meta_loss(learner.policy, sampled, c.options.inner_lr, first_order)
    with torch.no_grad():
        for p, d in zip(named.values(), direction):
            p.sub_(2 * eps * d)
    down, _ = _reference_meta_loss(learner.policy, sampled, c.options.inner_lr, first_order)
    slope = sum((ours[n] * d).sum() for n, d in zip(named, direction)).item()
    if not first_order:  # the first-order gradient is not the objective's derivative
        assert (up.item() - down.item()) / (2 * eps) == pytest.approx(slope, rel=1e-5)


# --- the generic loop, the CLI ---------------------------------------------------------------------


def test_training_checkpoints_resumes_exactly_evaluates_and_plots(tmp_path, capsys):
    whole = train(
        tiny(iterations=4, val_every=2, val_tasks=3), tmp_path / "whole", progress=False, log=lambda _: None
    )
    assert whole.last_val is not None and whole.last_val.metric == "return"
    train(tiny(iterations=4), tmp_path / "split", progress=False, stop_after=2, log=lambda _: None)
    resumed = train(tiny(iterations=4), tmp_path / "split", resume=True, progress=False, log=lambda _: None)
    for a, b in zip(whole.learner.parameters(), resumed.learner.parameters()):
        assert torch.equal(a, b)
    learner, config, state = learner_from_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert state["iteration"] == 4 and isinstance(learner, MAMLRL)
    code, out, err = run(capsys, "eval", tmp_path / "whole" / "checkpoint.pt", "--tasks", 4)
    assert code == 0, err
    assert [f"return after {k} step" in out for k in range(4)] == [True] * 4
    code, out, err = run(capsys, "plot", tmp_path / "whole" / "checkpoint.pt", "--out", tmp_path / "nav.png")
    assert code == 0 and (tmp_path / "nav.png").stat().st_size > 10_000, err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--benchmark", "navigation", "--algorithm", "maml"], "does not learn RL tasks"),
        (["--benchmark", "sine", "--algorithm", "maml_rl"], "does not learn sine"),
        (
            ["--benchmark", "navigation", "--algorithm", "maml_rl", "--set", "max_kl=0"],
            "'max_kl' must be > 0",
        ),
        (["--benchmark", "navigation", "--algorithm", "maml_rl", "--precision", "bf16"], "own outer step"),
        (
            ["--benchmark", "halfcheetah_vel", "--algorithm", "maml_rl", "--set", "nav_reward=squared"],
            "nav_reward",
        ),
    ],
)
def test_bad_rl_configs_get_one_line(tmp_path, capsys, argv, message):
    code, out, err = run(capsys, "train", *argv, "--run-dir", tmp_path / "r", "--iterations", 1)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# --- learning -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_a_short_navigation_run_learns_to_adapt(tmp_path, seed):
    """After 30 meta-iterations the adapted policy beats the pre-update one, and beats what the
    untrained initial policy reaches with the same inner step."""
    c = tiny(
        seed=seed,
        hidden=[32, 32],
        meta_batch=10,
        shots=10,
        queries=10,
        horizon=30,
        iterations=30,
        checkpoint_every=0,
    )
    torch.manual_seed(seed)
    untrained = builders.build_learner(c.resolved())
    result = train(c, tmp_path, progress=False, log=lambda _: None)
    batch = RLTasks("navigation", seed=123).sample(20)
    pre, post = (r.mean().item() for r in result.learner.adaptation(batch, 1)[0])
    _, untrained_post = (r.mean().item() for r in untrained.adaptation(batch, 1)[0])
    # Measured over seeds 0-4: post - pre 4.3 to 5.1, post - untrained_post 6.3 to 7.6.
    assert post > pre + 2.5, (pre, post)
    assert post > untrained_post + 3.0, (post, untrained_post)
