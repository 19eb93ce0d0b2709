"""Matching Networks on Omniglot 5-way 1-shot: the paper's cosine attention against sharper ones.

    python benchmarks/matching_scale.py [--arms paper,scale10,learned,query_norm] [--episodes 3000]
        [--val-every 500] [--data-dir DIR]

Every arm trains configs/omniglot/matching_5w1s.yaml's model (Conv-4 with BatchNorm, 5-way 1-shot
episodes with 15 queries per class, Adam 1e-3, one episode per update) from the same initial
weights on the same episodes (seed 0), on one thread, and validates on the same 200 validation
episodes every `--val-every` episodes. Only the attention differs:

- paper: softmax_i(cos(f(x_hat), g(x_i))), eq. 2 of Vinyals et al. 2016 (the library's default);
- scale10: softmax_i(10 cos(...)), `cosine_scale: 10`;
- learned: softmax_i(s cos(...)) with s learned from 1, `learn_cosine_scale: true`;
- query_norm: softmax_i(f . g_i / |g_i|), the cosine divided by the support norm only, as in several
  public reimplementations: the query's norm then acts as a per-query temperature. Not a library
  option; defined here for the comparison.

`--diagnose CHECKPOINT` instead reads a trained Matching Network (a run folder's checkpoint.pt and the
config.yaml beside it) and prints, on 200 training and 200 validation episodes (`--diagnose-episodes`),
with BatchNorm in eval mode (running statistics, as validation and meta-test use) and in training mode
(the episode's statistics): the accuracy, the mean cosine to the true class's support example and
the largest to another class, P(true class), and the bound e / (e + N - 1) that cosines in [0, 1]
put on it.

Each arm's validation curve (with CPU seconds of the training thread), its mean training loss and
accuracy over the last 100 episodes, and the learned scale go to
benchmarks/results/matching_scale.json, merged into what is there (arms may run in parallel
processes). The run takes about 4 CPU-minutes per arm at 3,000 episodes.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.algorithms.metric.common import EVAL_CHUNK, embed_tasks, num_ways
from metalab.algorithms.metric.matching import MatchingNet
from metalab.builders import build_learner, build_optimizer, build_source, load_dataset
from metalab.config import config_from_dict, load_config
from metalab.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "omniglot" / "matching_5w1s.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "matching_scale.json"
ARMS = {
    "paper": {},
    "scale10": {"cosine_scale": 10.0},
    "learned": {"learn_cosine_scale": True},
    "query_norm": {},
}


class QueryNormMatchingNet(MatchingNet):
    """Attention softmax_i(f . g_i / |g_i|): the support norm divides, the query norm stays."""

    def attention(self, support_x: Tensor, query_x: Tensor) -> Tensor:
        chunk = None if self.training else EVAL_CHUNK
        support_z, query_z = embed_tasks(self.encoder, support_x, query_x, chunk=chunk)
        g, f = support_z.flatten(2), query_z.flatten(2)
        return torch.softmax(f @ F.normalize(g, dim=-1).transpose(1, 2), dim=-1)


def arm_config(name: str, data_dir: str):
    return config_from_dict({"data_dir": data_dir, "seed": 0, **ARMS[name]}, load_config(CONFIG)).resolved()


def run_arm(name: str, args, dataset) -> dict:
    c = arm_config(name, args.data_dir)
    torch.manual_seed(c.seed)
    learner = build_learner(c)
    if name == "query_norm":
        plain = learner
        learner = QueryNormMatchingNet(plain.encoder)
    optimizer = build_optimizer(c, learner)
    source = build_source(c, "train", dataset)
    curve, losses, accuracies = [], [], []
    cpu0 = time.thread_time()
    for episode in range(1, args.episodes + 1):
        learner.train()
        loss, metrics = learner.meta_loss(source.sample(c.meta_batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(metrics["loss"])
        accuracies.append(metrics["accuracy"])
        if episode % args.val_every == 0:
            r = evaluate(learner, build_source(c, "val", dataset), args.val_tasks)
            point = {
                "episode": episode,
                "val_accuracy": round(100 * r.mean, 2),
                "val_ci95": round(100 * r.ci95, 2),
                "cpu_seconds": round(time.thread_time() - cpu0, 1),
                "train_loss_last100": round(sum(losses[-100:]) / len(losses[-100:]), 3),
                "train_accuracy_last100": round(100 * sum(accuracies[-100:]) / len(accuracies[-100:]), 2),
            }
            if name == "learned":
                point["scale"] = round(float(learner.scale().detach()), 3)
            curve.append(point)
            print(f"{name} {point}", flush=True)
    return {
        "arm": name,
        "overrides": ARMS[name],
        "episodes": args.episodes,
        "val_tasks": args.val_tasks,
        "threads": torch.get_num_threads(),
        "curve": curve,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, torch {torch.__version__}",
    }


def diagnose(checkpoint: Path, data_dir: str, episodes: int) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    c = config_from_dict({"data_dir": data_dir}, load_config(checkpoint.parent / "config.yaml")).resolved()
    dataset = load_dataset(c)
    learner = build_learner(c)
    learner.load_state_dict(state["learner"])
    bound = math.e / (math.e + c.test_ways - 1)
    print(f"{checkpoint} after {state['iteration']} episodes; P(true) <= {bound:.3f} at {c.test_ways} ways")
    for split in ("train", "val"):
        for bn_training in (False, True):
            learner.train(bn_training)
            source = build_source(c, split, dataset)
            hits, true_cos, other_cos, p_true = [], [], [], []
            with torch.no_grad():
                for start in range(0, episodes, 25):
                    b = source.sample(min(25, episodes - start))
                    s, q = embed_tasks(learner.encoder, b.support_x, b.query_x)
                    ways = num_ways(b.support_y)
                    onehot = F.one_hot(b.support_y, ways).to(s.dtype)
                    cos = F.normalize(q.flatten(2), dim=-1) @ F.normalize(s.flatten(2), dim=-1).transpose(
                        1, 2
                    )
                    by_class = (cos @ onehot) / onehot.sum(1, keepdim=True)  # mean cosine per class
                    is_true = F.one_hot(b.query_y, ways).bool()
                    hits.append((by_class.argmax(-1) == b.query_y).float().flatten())
                    true_cos.append(by_class[is_true])
                    other_cos.append(by_class.masked_fill(is_true, -2.0).max(-1).values.flatten())
                    p_true.append(learner.predict(b.support_x, b.support_y, b.query_x).exp()[is_true])
            print(
                f"{split:5s} BatchNorm {'training' if bn_training else 'eval    '}: "
                f"accuracy {100 * torch.cat(hits).mean():.2f}%, cos(true) {torch.cat(true_cos).mean():.3f}, "
                f"max cos(other) {torch.cat(other_cos).mean():.3f}, P(true) {torch.cat(p_true).mean():.3f}"
            )


def record(result: dict, out: Path) -> None:
    """Merge one arm's result into `out` under a lock on the file itself."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        stored = json.loads(text) if text.strip() else {}
        stored[result["arm"]] = result
        f.seek(0)
        f.truncate()
        f.write(json.dumps(stored, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of: " + ", ".join(ARMS))
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-tasks", type=int, default=200)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    p.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    p.add_argument("--diagnose", type=Path, metavar="CHECKPOINT", help="diagnose a trained model instead")
    p.add_argument("--diagnose-episodes", type=int, default=200, help="episodes per split and mode")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.diagnose is not None:
        diagnose(args.diagnose, args.data_dir, args.diagnose_episodes)
        return 0
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm {unknown[0]!r} (choose from {', '.join(ARMS)})")
    dataset = load_dataset(arm_config(arms[0], args.data_dir))  # the same data for every arm
    for arm in arms:
        record(run_arm(arm, args, dataset), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
