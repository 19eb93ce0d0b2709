"""Meta-reinforcement learning: MAML on the 2D navigation and half-cheetah tasks of Finn et al. 2017.

envs.py     vectorised environments (Navigation2D, HalfCheetah) and their task distributions
tasks.py    the task source (RLTasks) and its meta-batches (RLTaskBatch)
policy.py   the Gaussian MLP policy as a function of a parameter dict
returns.py  episodes, discounted returns, GAE, the linear feature baseline
trpo.py     conjugate gradient and the TRPO step
learner.py  MAMLRL and the specs maml_rl, pretrained_rl, random_rl
plots.py    navigation trajectories before and after adaptation, learning curves
"""

from .envs import HORIZONS, RL_BENCHMARKS, HalfCheetah, Navigation2D, make_env, mujoco_missing, sample_tasks
from .learner import MAMLRL, MAMLRLOptions, RLOptions
from .policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from .returns import Episodes, advantages, discounted_returns, fit_linear_baseline, gae, mean_return
from .tasks import RLTaskBatch, RLTasks
from .trpo import conjugate_gradient, trpo_step

__all__ = [
    "RL_BENCHMARKS",
    "HORIZONS",
    "Navigation2D",
    "HalfCheetah",
    "make_env",
    "mujoco_missing",
    "sample_tasks",
    "MAMLRL",
    "RLOptions",
    "MAMLRLOptions",
    "GaussianMLPPolicy",
    "gaussian_log_prob",
    "gaussian_kl",
    "Episodes",
    "advantages",
    "discounted_returns",
    "fit_linear_baseline",
    "gae",
    "mean_return",
    "RLTaskBatch",
    "RLTasks",
    "conjugate_gradient",
    "trpo_step",
]
