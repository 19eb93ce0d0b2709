"""Vectorised environments of the MAML reinforcement-learning benchmarks: a batch of episodes,
each with its own task parameter, stepped together.

References:
    Finn, Abbeel & Levine 2017, section 5.3: 2D navigation (a point moves to a goal drawn uniformly
    in [-0.5, 0.5]^2 from the origin; actions are velocity commands clipped to [-0.1, 0.1]; the
    episode ends within 0.01 of the goal or at the horizon H = 100) and half-cheetah with a goal
    velocity (uniform in [0, 2]) or a direction (forward or backward), H = 200.

Every environment has the same small surface: `reset(tasks, generator) -> obs`, of shape
(B, obs_dim), one episode per row of `tasks` (B, task_dim); `step(actions) -> (obs, reward, done)`,
of shapes (B, obs_dim), (B,), (B,). Actions are the policy's raw samples; each environment maps
them to its action range as the authors' code does (rllab's `normalize` wrapper: [-1, 1] onto the
bounds, then clipped). Random numbers (task draws, initial-state noise) come from the
`torch.Generator` passed in, so a seeded generator gives the same episodes everywhere.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Navigation2D",
    "HalfCheetah",
    "RL_BENCHMARKS",
    "HORIZONS",
    "make_env",
    "sample_tasks",
    "mujoco_missing",
]

RL_BENCHMARKS = ("navigation", "halfcheetah_vel", "halfcheetah_dir")
HORIZONS = {"navigation": 100, "halfcheetah_vel": 200, "halfcheetah_dir": 200}


def sample_tasks(benchmark: str, num: int, generator: torch.Generator) -> Tensor:
    """Task parameters of shape (num, task_dim): navigation goals uniform in [-0.5, 0.5]^2,
    half-cheetah goal velocities uniform in [0, 2], or directions +1 / -1 with equal odds."""
    if benchmark == "navigation":
        return torch.rand(num, 2, generator=generator) - 0.5
    if benchmark == "halfcheetah_vel":
        return 2.0 * torch.rand(num, 1, generator=generator)
    if benchmark == "halfcheetah_dir":
        return 2.0 * torch.randint(0, 2, (num, 1), generator=generator).float() - 1.0
    raise ValueError(f"unknown RL benchmark {benchmark!r}; one of {', '.join(RL_BENCHMARKS)}")


class Navigation2D:
    """The point robot of section 5.3, all episodes as one tensor.

    The state is the position; an action a moves it by clip(0.1 * a, -0.1, 0.1) per coordinate
    (rllab's `normalize` maps the policy's [-1, 1] onto the action bounds [-0.1, 0.1]). The reward
    after a move is the negative squared distance to the goal (`reward="squared"`, the paper's
    text) or the negative distance (`reward="distance"`, the authors' code). An episode is done
    when both coordinates are within 0.01 of the goal (the authors' code), else at the horizon.

    Args:
        reward: "squared" or "distance".
        horizon: steps per episode.
    """

    obs_dim, act_dim, task_dim = 2, 2, 2
    bound = 0.1

    def __init__(self, reward: str = "distance", horizon: int = 100) -> None:
        if reward not in ("squared", "distance"):
            raise ValueError(f"reward must be 'squared' or 'distance', got {reward!r}")
        self.reward, self.horizon = reward, horizon
        self.goals = self.state = None

    def reset(self, tasks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self.goals = tasks.to(torch.float32)
        self.state = torch.zeros_like(self.goals)
        return self.state.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        move = (self.bound * actions.to(self.state)).clamp(-self.bound, self.bound)
        self.state = self.state + move
        gap = self.state - self.goals
        squared = (gap**2).sum(-1)
        reward = -squared if self.reward == "squared" else -squared.sqrt()
        done = (gap.abs() < 0.01).all(-1)
        return self.state.clone(), reward, done


def mujoco_missing() -> str | None:
    """Why the half-cheetah environments cannot run here (None where they can)."""
    try:
        import gymnasium  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as e:
        return f"the half-cheetah benchmarks need gymnasium and mujoco ({e}): pip install 'metalab[rl]'"
    return None


@contextlib.contextmanager
def quiet_mujoco():
    """MuJoCo's warnings dropped while loading a model: gymnasium's half-cheetah still uses a
    deprecated compiler attribute, and MuJoCo would append that warning to MUJOCO_LOG.TXT in the
    working folder on every load."""
    import mujoco

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class HalfCheetah:
    """Gymnasium's MuJoCo HalfCheetah (v5 model and observation), one `MjData` per episode.

    The observation is gymnasium's (qpos without the x position, then qvel: 17 numbers); the
    initial state is gymnasium's (qpos + U(-0.1, 0.1), qvel + 0.1 N(0, 1)); each step applies the
    action clipped to [-1, 1] for 5 physics steps (dt = 0.05 s). The forward velocity v is the
    x position's change over the step divided by dt (gymnasium's `x_velocity`). Rewards, with the
    control cost 0.05 |a|^2 of the authors' code (on the clipped action):

    - goal velocity (`task="vel"`, task parameter v_goal): -|v - v_goal| - 0.05 |a|^2;
    - direction (`task="dir"`, task parameter +1 or -1): direction * v - 0.05 |a|^2.

    Episodes never end before the horizon.
    """

    obs_dim, act_dim, task_dim = 17, 6, 1
    frame_skip = 5
    reset_noise = 0.1
    ctrl_cost = 0.05

    def __init__(self, task: str = "vel", horizon: int = 200) -> None:
        missing = mujoco_missing()
        if missing:
            raise RuntimeError(missing)
        if task not in ("vel", "dir"):
            raise ValueError(f"task must be 'vel' or 'dir', got {task!r}")
        import mujoco

        self.task, self.horizon, self._mujoco = task, horizon, mujoco
        with quiet_mujoco():
            self.model = mujoco.MjModel.from_xml_path(self.model_path())
        self.dt = self.model.opt.timestep * self.frame_skip
        init = mujoco.MjData(self.model)
        self.init_qpos, self.init_qvel = init.qpos.copy(), init.qvel.copy()
        self.datas: list = []
        self.goals = None

    @staticmethod
    def model_path() -> str:
        from pathlib import Path

        import gymnasium

        return str(Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml")

    def reset(self, tasks: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mujoco, model = self._mujoco, self.model
        n = tasks.shape[0]
        while len(self.datas) < n:
            self.datas.append(mujoco.MjData(model))
        self.goals = tasks[:, 0].double().numpy()
        noise_pos = torch.rand(n, model.nq, generator=generator, dtype=torch.float64).numpy()
        noise_vel = torch.randn(n, model.nv, generator=generator, dtype=torch.float64).numpy()
        for i, data in enumerate(self.datas[:n]):
            mujoco.mj_resetData(model, data)
            data.qpos[:] = self.init_qpos + self.reset_noise * (2.0 * noise_pos[i] - 1.0)
            data.qvel[:] = self.init_qvel + self.reset_noise * noise_vel[i]
            mujoco.mj_forward(model, data)
        return self._observe(n)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> Tensor:
        """Put episode i in state (qpos[i], qvel[i]) (for comparisons with gymnasium's env)."""
        for i, data in enumerate(self.datas[: len(qpos)]):
            data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
            self._mujoco.mj_forward(self.model, data)
        return self._observe(len(qpos))

    def _observe(self, n: int) -> Tensor:
        obs = np.stack([np.concatenate([d.qpos[1:], d.qvel]) for d in self.datas[:n]])
        return torch.from_numpy(obs).float()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mujoco, model = self._mujoco, self.model
        a = actions.detach().cpu().double().clamp(-1.0, 1.0).numpy()
        n = a.shape[0]
        velocity = np.empty(n)
        for i, data in enumerate(self.datas[:n]):
            x_before = data.qpos[0]
            data.ctrl[:] = a[i]
            mujoco.mj_step(model, data, nstep=self.frame_skip)
            velocity[i] = (data.qpos[0] - x_before) / self.dt
        self.velocity = velocity
        control = self.ctrl_cost * (a**2).sum(-1)
        if self.task == "vel":
            reward = -np.abs(velocity - self.goals[:n]) - control
        else:
            reward = self.goals[:n] * velocity - control
        return self._observe(n), torch.from_numpy(reward).float(), torch.zeros(n, dtype=torch.bool)


def make_env(benchmark: str, *, horizon: int | None = None, reward: str = "distance"):
    """The vectorised environment of an RL benchmark (`horizon` default: the paper's)."""
    horizon = horizon or HORIZONS[benchmark]
    if benchmark == "navigation":
        return Navigation2D(reward, horizon)
    if benchmark in ("halfcheetah_vel", "halfcheetah_dir"):
        return HalfCheetah(benchmark.rsplit("_", 1)[1], horizon)
    raise ValueError(f"unknown RL benchmark {benchmark!r}; one of {', '.join(RL_BENCHMARKS)}")
