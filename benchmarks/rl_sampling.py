"""Sampling throughput of the RL benchmarks: environment steps per second with the policy in the
loop (the Gaussian MLP, 100 x 100), vectorised (every episode of a meta-batch stepped together, as
`MAMLRL.rollout` does) against one environment at a time (one episode after another, one
observation per policy call; for half-cheetah that is gymnasium's own `HalfCheetah-v5`).

    python benchmarks/rl_sampling.py            # writes benchmarks/results/rl_sampling.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from metalab.functional import named_params
from metalab.rl import GaussianMLPPolicy, RLTasks, make_env, mujoco_missing
from metalab.rl.learner import MAMLRL

OUT = Path(__file__).parent / "results" / "rl_sampling.json"


def vectorised(benchmark: str, tasks: int, per_task: int) -> dict:
    env = make_env(benchmark)
    learner = MAMLRL(GaussianMLPPolicy(env.obs_dim, env.act_dim, (100, 100)), env)
    params = {k: v.detach() for k, v in named_params(learner.policy).items()}
    batch = RLTasks(benchmark, seed=0).sample(tasks)
    start = time.perf_counter()
    learner.rollout(params, batch.tasks, per_task, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    steps = tasks * per_task * env.horizon
    return {
        "episodes": tasks * per_task,
        "env_steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
    }


@torch.no_grad()
def one_at_a_time(benchmark: str, episodes: int) -> dict:
    env = make_env(benchmark)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, (100, 100))
    tasks = RLTasks(benchmark, seed=0).sample(episodes).tasks
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    if benchmark == "navigation":
        for i in range(episodes):
            obs = env.reset(tasks[i : i + 1])
            for _ in range(env.horizon):
                mean = policy(obs)
                obs, _, _ = env.step(mean + policy.log_std.exp() * torch.randn(mean.shape, generator=g))
    else:
        import gymnasium

        from metalab.rl.envs import quiet_mujoco

        with quiet_mujoco():
            single = gymnasium.make("HalfCheetah-v5").unwrapped
        for i in range(episodes):
            obs, _ = single.reset(seed=i)
            for _ in range(env.horizon):
                mean = policy(torch.as_tensor(obs, dtype=torch.float32)[None])
                a = mean + policy.log_std.exp() * torch.randn(mean.shape, generator=g)
                obs, _, _, _, _ = single.step(a[0].clamp(-1, 1).double().numpy())
    seconds = time.perf_counter() - start
    steps = episodes * env.horizon
    return {"episodes": episodes, "env_steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def main() -> None:
    torch.set_num_threads(1)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
        "navigation": {
            "vectorised (20 tasks x 20 episodes)": vectorised("navigation", 20, 20),
            "one env at a time": one_at_a_time("navigation", 20),
        },
    }
    if mujoco_missing() is None:
        results["halfcheetah_vel"] = {
            "vectorised (10 tasks x 10 episodes)": vectorised("halfcheetah_vel", 10, 10),
            "one env at a time (gymnasium HalfCheetah-v5)": one_at_a_time("halfcheetah_vel", 5),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for name, rows in results.items():
        if isinstance(rows, dict):
            for how, r in rows.items():
                print(
                    f"{name:16s} {how:45s} {r['steps_per_s']:10,.0f} env steps/s ({r['env_steps']:,} steps)"
                )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
