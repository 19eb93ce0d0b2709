"""Transfer learning against meta-learning on real CIFAR-10: pre-train on 5 base classes, then learn
5 novel classes from 1, 5, 20, 100 or all 5,000 images per class (docs/transfer.md).

    python benchmarks/transfer.py --stage all          # or one stage at a time, in this order:
    python benchmarks/transfer.py --stage pretrain     # ResNet-12 on the base classes' 25,000 images
    python benchmarks/transfer.py --stage scratch      # (a) the same network from scratch, n per class
    python benchmarks/transfer.py --stage finetune     # (b) the pre-trained network fine-tuned
    python benchmarks/transfer.py --stage frozen       # (c) linear / cosine classifier on frozen features
    python benchmarks/transfer.py --stage protonet     # (d) ProtoNet meta-trained, then its 5-way episodes
    python benchmarks/transfer.py --stage maml         # (d) MAML (Conv-4) meta-trained, then its episodes
    python benchmarks/transfer.py --stage episodes     # (d) frozen features: prototype / linear / cosine
    python benchmarks/transfer.py --stage crossdomain  # CIFAR features on Fashion-MNIST episodes
    python benchmarks/transfer.py --stage report       # tables + docs/transfer.png
    python benchmarks/transfer.py --stage timing       # images/s of the candidate backbones (not in all)

Base classes: airplane, automobile, bird, cat, deer; novel classes: dog, frog, horse, ship, truck.
Every run writes its figure (and wall-clock) into benchmarks/results/transfer.json as soon as it
finishes, merged into what is there, and a stage skips the runs already recorded, so a killed stage
restarts where it stopped. Trained weights go to benchmarks/out/transfer/ (git-ignored).
`--synthetic` replaces CIFAR-10 and Fashion-MNIST by tiny random colour images (the test's mode).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.algorithms.metric.protonet import ProtoNet
from metalab.algorithms.optimization.maml import MAML
from metalab.algorithms.transfer.baseline import Baseline, CosineClassifier
from metalab.data.dataset import to_float
from metalab.data.fashion_mnist import read_idx
from metalab.evaluate import evaluate
from metalab.models import Conv4
from metalab.models.resnet import ResNet12
from metalab.tasks.episode import TaskBatch
from metalab.tasks.sampler import EpisodeSampler, class_index

ROOT = Path(__file__).resolve().parent.parent
BASE = ("airplane", "automobile", "bird", "cat", "deer")
NOVEL = ("dog", "frog", "horse", "ship", "truck")
FMNIST = "/usr/share/datasets/fashion-mnist"
STAGES = (
    "timing",
    "pretrain",
    "scratch",
    "finetune",
    "frozen",
    "protonet",
    "maml",
    "episodes",
    "crossdomain",
    "report",
)


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Split:
    """uint8 images (M, 3, 32, 32) and labels (M,) in 0..C-1."""

    x: Tensor
    y: Tensor


@dataclass
class Data:
    base_train: Split
    base_test: Split
    novel_train: Split
    novel_test: Split
    fmnist: Split  # Fashion-MNIST's 10,000 test images as 32x32 RGB, all 10 classes


def _pick(images: Tensor, labels: Tensor, classes: list[str], names: tuple[str, ...]) -> Split:
    ids = [classes.index(n) for n in names]
    keep = torch.isin(labels, torch.tensor(ids))
    remap = torch.full((len(classes),), -1, dtype=torch.long)
    remap[torch.tensor(ids)] = torch.arange(len(ids))
    return Split(images[keep].contiguous(), remap[labels[keep]])


def grey28_to_rgb32(x: Tensor) -> Tensor:
    """(M, 28, 28) uint8 greyscale -> (M, 3, 32, 32) uint8, bilinear resize, the grey in 3 channels."""
    up = F.interpolate(x[:, None].float(), size=(32, 32), mode="bilinear", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def load_fmnist(folder: str) -> Split:
    """Fashion-MNIST's 10,000 test images as 32x32 RGB, with their labels 0-9."""
    x = torch.tensor(read_idx(Path(folder) / "t10k-images-idx3-ubyte.gz", images=True))
    y = torch.tensor(read_idx(Path(folder) / "t10k-labels-idx1-ubyte.gz", images=False), dtype=torch.long)
    return Split(grey28_to_rgb32(x), y)


def load_data(args) -> Data:
    if args.synthetic:
        return synthetic_data(args.synthetic)
    from metalab.data.cifar import load_cifar10

    c = load_cifar10(args.cifar)
    return Data(
        _pick(c.train_images, c.train_labels, c.classes, BASE),
        _pick(c.test_images, c.test_labels, c.classes, BASE),
        _pick(c.train_images, c.train_labels, c.classes, NOVEL),
        _pick(c.test_images, c.test_labels, c.classes, NOVEL),
        load_fmnist(args.fmnist),
    )


def synthetic_data(per_class: int, seed: int = 0) -> Data:
    """Random images whose mean colour depends on the class: learnable, tiny, CIFAR-shaped."""
    g = torch.Generator().manual_seed(seed)

    def make(classes: int, n: int, offset: int) -> Split:
        y = torch.arange(classes).repeat_interleave(n)
        colour = (torch.arange(classes)[:, None] + offset) * torch.tensor([37, 71, 113]) % 200 + 28
        x = colour[y][:, :, None, None] + torch.randint(-25, 26, (len(y), 3, 32, 32), generator=g)
        return Split(x.clamp(0, 255).to(torch.uint8), y)

    return Data(make(5, per_class, 0), make(5, 4, 0), make(5, per_class, 5), make(5, 4, 5), make(10, 20, 11))


def crop_flip(x: Tensor, g: torch.Generator, pad: int = 4) -> Tensor:
    """The standard CIFAR augmentation on uint8 images (..., C, H, W): a random H x W crop of the image
    zero-padded by `pad` pixels on each side, and a horizontal flip with probability 1/2."""
    # metalab.data.augment's random_crop + random_flip do the same but draw their random numbers in
    # another order; this one is kept so that docs/transfer.md's figures reproduce draw for draw.
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    x = x.reshape(-1, c, h, w)
    b = x.shape[0]
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.randint(0, 2 * pad + 1, (b, 1), generator=g) + torch.arange(h)
    cols = torch.randint(0, 2 * pad + 1, (b, 1), generator=g) + torch.arange(w)
    flip = torch.rand(b, 1, generator=g) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    out = padded[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return out.reshape(*lead, c, h, w)


def subset(split: Split, n: int | None, seed: int) -> Split:
    """n images per class drawn at random (all of them when n is None)."""
    if n is None:
        return split
    g = torch.Generator().manual_seed(seed)
    table, counts = class_index(split.y, torch.unique(split.y))
    picks = [table[c, torch.randperm(int(counts[c]), generator=g)[:n]] for c in range(len(counts))]
    idx = torch.cat(picks)
    return Split(split.x[idx], split.y[idx])


# --- networks -----------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Float images in [0, 1] -> features: per-channel standardisation, then the backbone, run under
    bf16 autocast when `bf16` (the features come out as float32)."""

    def __init__(self, backbone: nn.Module, mean: Tensor, std: Tensor, bf16: bool) -> None:
        super().__init__()
        self.backbone, self.bf16 = backbone, bf16
        self.feature_dim = backbone.feature_dim
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float())

    def forward(self, x: Tensor) -> Tensor:
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            z = self.backbone(x)
        return z.float()


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    f = x.float().div_(255)
    return f.mean((0, 2, 3)), f.std((0, 2, 3))


def make_encoder(args, stats: tuple[Tensor, Tensor], seed: int) -> Encoder:
    torch.manual_seed(seed)
    widths = tuple(int(w) for w in args.widths.split(","))
    net = ResNet12(3, widths, norm="batch", image_size=32, channels_last=True)
    return Encoder(net, *stats, bf16=not args.fp32)


def freeze_norm_stats(module: nn.Module) -> None:
    """Batch norms in eval mode: running statistics used and kept; their affine parts still train."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_classifier(
    encoder: Encoder,
    head: nn.Module,
    data: Split,
    *,
    steps: int,
    batch: int,
    lr: float,
    weight_decay: float,
    seed: int,
    norm_stats: bool = True,
    log: str = "",
) -> None:
    """SGD (momentum 0.9, Nesterov) with a cosine learning-rate decay, crop + flip augmentation,
    cross-entropy; `norm_stats=False` keeps the batch norms' running statistics (fine-tuning)."""
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    warmup = min(100, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda t: (
            (t + 1) / warmup
            if t < warmup
            else 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))
        ),
    )
    g = torch.Generator().manual_seed(seed)
    m = len(data.y)
    batch = min(batch, m)
    encoder.train(), head.train()
    if not norm_stats:
        freeze_norm_stats(encoder)
    order, pos, start = torch.randperm(m, generator=g), 0, time.perf_counter()
    for step in range(steps):
        if pos + batch > m:
            order, pos = torch.randperm(m, generator=g), 0
        idx = order[pos : pos + batch]
        pos += batch
        x = to_float(crop_flip(data.x[idx], g))
        loss = F.cross_entropy(head(encoder(x)), data.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // 40) == 0:
            rate = (step + 1) * batch / (time.perf_counter() - start)
            print(f"  {log} step {step + 1}/{steps} loss {loss.item():.3f} ({rate:.0f} img/s)", flush=True)
    encoder.eval(), head.eval()


@torch.no_grad()
def embed(encoder: nn.Module, x: Tensor, chunk: int = 500) -> Tensor:
    encoder.eval()
    return torch.cat([encoder(to_float(part)) for part in x.split(chunk)])


@torch.no_grad()
def accuracy(encoder: Encoder, head: nn.Module, data: Split) -> float:
    head.eval()
    return (head(embed(encoder, data.x)).argmax(1) == data.y).float().mean().item()


# --- results file -------------------------------------------------------------------------------


class Results:
    """benchmarks/results/transfer.json: {section: {key: entry}}, merged on every write."""

    def __init__(self, path: Path, lock: Path) -> None:
        self.path, self.lock = path, lock

    def load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, section: str, key: str):
        return self.load().get(section, {}).get(key)

    def put(self, section: str, key: str, entry) -> None:
        """Read, merge and write under an exclusive lock: stages may run in parallel processes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load()
            data.setdefault(section, {})[key] = entry
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)


# --- the stages ---------------------------------------------------------------------------------


def sizes(args) -> list[int | None]:
    return [None if s == "all" else int(s) for s in args.ns.split(",")]


def draws_for(args, n: int | None) -> int:
    table = dict(item.split(":") for item in args.draws.split(","))
    return int(table.get("all" if n is None else str(n), 1))


def steps_for(args, n: int | None, method: str) -> int:
    """Optimiser steps of a run on n images per class: all images -> the method's epochs; fewer ->
    `--small-steps` (n:steps), about as many passes as fit the budget."""
    if n is None:
        epochs = args.scratch_epochs if method == "scratch" else args.finetune_epochs
        return max(1, round(epochs * 5 * args.full_per_class / args.batch))
    table = {int(k): int(v) for k, v in (item.split(":") for item in args.small_steps.split(","))}
    return table.get(n, max(table.values()))


def key(n: int | None, draw: int) -> str:
    return f"n={'all' if n is None else n}/draw={draw}"


def pretrained(args, data: Data, stats) -> tuple[Encoder, nn.Module]:
    path = args.out / "pretrain.pt"
    if not path.exists():
        raise SystemExit(f"metalab: error: {path} is missing: run --stage pretrain first")
    encoder = make_encoder(args, stats, 0)
    state = torch.load(path, weights_only=True)
    head = nn.Linear(encoder.feature_dim, len(BASE))
    encoder.load_state_dict(state["encoder"]), head.load_state_dict(state["head"])
    return encoder.eval(), head.eval()


def stage_pretrain(args, data: Data, stats, results: Results) -> None:
    path = args.out / "pretrain.pt"
    if path.exists() and results.get("pretrain", "resnet12"):
        print("pretrain: done already")
        return
    encoder = make_encoder(args, stats, 0)
    head = nn.Linear(encoder.feature_dim, len(BASE))
    steps = max(1, round(args.pretrain_epochs * len(data.base_train.y) / args.batch))
    start = time.perf_counter()
    train_classifier(
        encoder, head, data.base_train, steps=steps, batch=args.batch, lr=0.1, weight_decay=5e-4,
        seed=0, log="pretrain",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    torch.save({"encoder": encoder.state_dict(), "head": head.state_dict()}, path)
    acc = accuracy(encoder, head, data.base_test)
    entry = {"base_test_accuracy": acc, "seconds": seconds, "steps": steps, "epochs": args.pretrain_epochs}
    results.put("pretrain", "resnet12", entry)
    print(f"pretrain: base-class test accuracy {100 * acc:.2f}% after {seconds:.0f} s")


def stage_novel(args, data: Data, stats, results: Results, method: str) -> None:
    """(a) scratch or (b) finetune, for every n and draw."""
    for n in sizes(args):
        for draw in range(draws_for(args, n)):
            k = key(n, draw)
            if results.get(method, k):
                continue
            train = subset(data.novel_train, n, seed=1000 + draw)
            steps = steps_for(args, n, method)
            if method == "scratch":
                encoder, lr, norm_stats = make_encoder(args, stats, 1 + draw), args.scratch_lr, True
            else:
                encoder, lr, norm_stats = pretrained(args, data, stats)[0], args.finetune_lr, False
            torch.manual_seed(2 + draw)
            head = nn.Linear(encoder.feature_dim, len(NOVEL))
            start = time.perf_counter()
            train_classifier(
                encoder, head, train, steps=steps, batch=args.batch, lr=lr, weight_decay=5e-4,
                seed=draw, norm_stats=norm_stats, log=f"{method} {k}" if n is None else "",
            )  # fmt: skip
            seconds = time.perf_counter() - start
            acc = accuracy(encoder, head, data.novel_test)
            results.put(
                method, k, {"accuracy": acc, "seconds": seconds, "steps": steps, "images": len(train.y)}
            )
            print(f"{method} {k}: {100 * acc:.2f}% ({steps} steps, {seconds:.0f} s)", flush=True)


def cached_features(args, name: str, encoder: nn.Module, x: Tensor) -> Tensor:
    path = args.out / f"features_{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    z = embed(encoder, x)
    torch.save(z, path)
    return z


def fit_on_features(classifier: nn.Module, z: Tensor, y: Tensor, steps: int, seed: int) -> nn.Module:
    """Full-batch Adam (lr 0.01, L2 1e-3 on the weights) on frozen features."""
    opt = torch.optim.Adam(classifier.parameters(), lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(classifier(z), y) + 1e-3 * sum(p.pow(2).sum() for p in classifier.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return classifier


def stage_frozen(args, data: Data, stats, results: Results) -> None:
    encoder = pretrained(args, data, stats)[0]
    start = time.perf_counter()
    z_train = cached_features(args, "pretrain_novel_train", encoder, data.novel_train.x)
    z_test = cached_features(args, "pretrain_novel_test", encoder, data.novel_test.x)
    extract = time.perf_counter() - start
    features = Split(z_train, data.novel_train.y)
    for n in sizes(args):
        for draw in range(draws_for(args, n)):
            train = subset(features, n, seed=1000 + draw)  # the same images as scratch / finetune
            for kind in ("linear", "cosine"):
                k = key(n, draw)
                if results.get(kind, k):
                    continue
                torch.manual_seed(3 + draw)
                d = z_train.shape[1]
                clf = nn.Linear(d, len(NOVEL)) if kind == "linear" else CosineClassifier(d, len(NOVEL))
                t0 = time.perf_counter()
                fit_on_features(clf, train.x, train.y, args.feature_steps, draw)
                with torch.no_grad():
                    acc = (clf(z_test).argmax(1) == data.novel_test.y).float().mean().item()
                seconds = time.perf_counter() - t0
                entry = {"accuracy": acc, "seconds": seconds, "feature_extraction_seconds": extract}
                results.put(kind, k, entry)
                print(f"frozen {kind} {k}: {100 * acc:.2f}% ({seconds:.1f} s)", flush=True)


class SplitEpisodes:
    """N-way episodes whose K support examples per class come from one pool (the novel classes'
    training images) and whose Q queries per class come from another (their test images).

    `sample(T)` returns a `TaskBatch`, labels relabelled 0..N-1 in a random class order per task.
    """

    def __init__(self, support: Split, query: Split, ways: int, shots: int, queries: int, seed: int,
                 transform=None) -> None:  # fmt: skip
        classes = torch.unique(support.y)
        self.s_table, self.s_counts = class_index(support.y, classes)
        self.q_table, self.q_counts = class_index(query.y, classes)
        if int(self.s_counts.min()) < shots or int(self.q_counts.min()) < queries:
            raise ValueError(f"a class has fewer than {shots} support or {queries} query examples")
        self.support, self.query, self.classes = support, query, classes
        self.ways, self.shots, self.queries, self.transform = ways, shots, queries, transform
        self.g = torch.Generator().manual_seed(seed)

    def _draw(self, table: Tensor, counts: Tensor, picked: Tensor, k: int) -> Tensor:
        t, n = picked.shape
        keys = torch.rand(t, n, table.shape[1], generator=self.g)
        keys.masked_fill_(torch.arange(table.shape[1]) >= counts[picked][..., None], 2.0)
        return table[picked[..., None], keys.argsort(2)[..., :k]]  # (T, N, k)

    def sample(self, num_tasks: int) -> TaskBatch:
        picked = torch.rand(num_tasks, len(self.classes), generator=self.g).argsort(1)[:, : self.ways]
        s = self._draw(self.s_table, self.s_counts, picked, self.shots).flatten(1)
        q = self._draw(self.q_table, self.q_counts, picked, self.queries).flatten(1)
        labels = torch.arange(self.ways)
        sy = labels.repeat_interleave(self.shots).expand(num_tasks, -1)
        qy = labels.repeat_interleave(self.queries).expand(num_tasks, -1)
        sx, qx = self.support.x[s], self.query.x[q]
        if self.transform is not None:
            sx, qx = self.transform(sx), self.transform(qx)
        return TaskBatch(sx, sy.contiguous(), qx, qy.contiguous())


def augmented_float(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda x: to_float(crop_flip(x, g))


def meta_train(
    args, learner: nn.Module, source, *, minutes: float, iterations: int, tasks: int, log: str
) -> dict:
    """Adam (lr 1e-3) on the learner's meta-loss over `tasks` episodes per step, for `iterations`
    steps or `minutes` of wall-clock, whichever comes first."""
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.train()
    start, done = time.perf_counter(), 0
    while done < iterations and time.perf_counter() - start < 60 * minutes:
        loss, metrics = learner.meta_loss(source.sample(tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if done % 50 == 0:
            print(f"  {log} iteration {done}: {metrics}", flush=True)
    learner.eval()
    return {"iterations": done, "planned_iterations": iterations, "seconds": time.perf_counter() - start}


def episode_entry(result, seconds: float) -> dict:
    return {**result.to_dict(), "seconds": seconds}


def run_episodes(
    results: Results, section: str, name: str, learner, make_source, episodes: int, shot_counts
) -> None:
    for shots in shot_counts:
        k = f"{name}/{shots}shot"
        if results.get(section, k):
            continue
        start = time.perf_counter()
        r = evaluate(learner, make_source(shots), episodes, batch_size=50)
        results.put(section, k, episode_entry(r, time.perf_counter() - start))
        print(f"{section} {k}: {r}", flush=True)


def train_protonet(args, data: Data, stats, results: Results) -> ProtoNet:
    """ProtoNet around the same ResNet-12, meta-trained on base-class episodes (loaded if done)."""
    path = args.out / "protonet.pt"
    proto = ProtoNet(make_encoder(args, stats, 10))
    if path.exists() and results.get("meta_training", "protonet"):
        proto.load_state_dict(torch.load(path, weights_only=True))
        return proto.eval()
    src = EpisodeSampler(data.base_train.x, data.base_train.y, ways=5, shots=args.meta_shots,
                         queries=15, seed=10, transform=augmented_float(10))  # fmt: skip
    info = meta_train(args, proto, src, minutes=args.protonet_minutes, iterations=args.protonet_iterations,
                      tasks=1, log="protonet")  # fmt: skip
    torch.save(proto.state_dict(), path)
    results.put("meta_training", "protonet", {**info, "train_shots": args.meta_shots})
    return proto.eval()


def train_maml(args, data: Data, stats, results: Results) -> MAML:
    """MAML around Conv-4 (32 filters) at 32x32, second order, meta-trained on base-class episodes."""
    path = args.out / "maml.pt"
    torch.manual_seed(11)
    conv4 = Conv4(3, hidden=32, out_features=5, image_size=32, norm="batch_stats")
    maml = MAML(nn.Sequential(Standardise(*stats), conv4), "classification", inner_lr=0.01, inner_steps=5,
                eval_inner_steps=10, strategy="loop")  # fmt: skip
    if path.exists() and results.get("meta_training", "maml"):
        maml.load_state_dict(torch.load(path, weights_only=True))
        return maml.eval()
    src = EpisodeSampler(data.base_train.x, data.base_train.y, ways=5, shots=args.maml_shots,
                         queries=args.maml_queries, seed=11, transform=augmented_float(11))  # fmt: skip
    info = meta_train(args, maml, src, minutes=args.maml_minutes, iterations=args.maml_iterations,
                      tasks=args.maml_tasks, log="maml")  # fmt: skip
    torch.save(maml.state_dict(), path)
    results.put(
        "meta_training",
        "maml",
        {
            **info,
            "train_shots": args.maml_shots,
            "train_queries": args.maml_queries,
            "tasks_per_step": args.maml_tasks,
        },
    )
    return maml.eval()


def feature_episodes(args, data: Data, z_train: Tensor, z_test: Tensor):
    """Episodes on cached features (encoders in eval mode, with running statistics, give every
    image the same features in every episode): shots -> a `SplitEpisodes`."""
    return lambda shots: SplitEpisodes(
        Split(z_train, data.novel_train.y),
        Split(z_test, data.novel_test.y),
        5,
        shots,
        args.queries,
        seed=shots,
    )


def shots_list(args) -> list[int]:
    return [int(s) for s in args.shots.split(",")]


def stage_protonet(args, data: Data, stats, results: Results) -> None:
    """Meta-train ProtoNet (unless done), then its novel-class episodes."""
    proto = train_protonet(args, data, stats, results)
    z = [cached_features(args, f"protonet_novel_{s}", proto.encoder, getattr(data, f"novel_{s}").x)
         for s in ("train", "test")]  # fmt: skip
    episodes = feature_episodes(args, data, *z)
    run_episodes(
        results, "episodes", "protonet", ProtoNet(nn.Identity()), episodes, args.episodes, shots_list(args)
    )


def stage_maml(args, data: Data, stats, results: Results) -> None:
    """Meta-train MAML (unless done), then its novel-class episodes, on images (MAML adapts the
    whole network to each support set)."""
    maml = train_maml(args, data, stats, results)

    def images(shots):
        return SplitEpisodes(
            data.novel_train, data.novel_test, 5, shots, args.queries, seed=shots, transform=to_float
        )

    run_episodes(results, "episodes", "maml", maml, images, args.episodes, shots_list(args))


def stage_episodes(args, data: Data, stats, results: Results) -> None:
    """The pre-trained network's frozen features on the novel-class episodes (ProtoNet's and MAML's
    episodes are their own stages)."""
    encoder = pretrained(args, data, stats)[0]
    z = [
        cached_features(args, f"pretrain_novel_{s}", encoder, getattr(data, f"novel_{s}").x)
        for s in ("train", "test")
    ]
    for name, learner in frozen_learners(z[0].shape[1], args.finetune_classifier_epochs):
        run_episodes(
            results,
            "episodes",
            name,
            learner,
            feature_episodes(args, data, *z),
            args.episodes,
            shots_list(args),
        )


class Standardise(nn.Module):
    """Per-channel standardisation of float images (a fixed first layer)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def frozen_learners(d: int, epochs: int):
    """The classifiers on frozen features: prototypes, Baseline's linear and Baseline++'s cosine
    classifier fitted per episode (Chen et al.'s fine-tuning recipe, `epochs` passes)."""
    return [
        ("pretrained+prototype", ProtoNet(nn.Identity())),
        ("pretrained+linear", Baseline(nn.Identity(), d, 5, cosine=False, finetune_epochs=epochs)),
        ("pretrained+cosine", Baseline(nn.Identity(), d, 5, cosine=True, finetune_epochs=epochs)),
    ]


def stage_crossdomain(args, data: Data, stats, results: Results) -> None:
    """CIFAR-trained features on Fashion-MNIST: 5-way episodes over its 10 classes, support and
    queries both from its 10,000 test images (disjoint within an episode)."""
    encoders = [("pretrained", pretrained(args, data, stats)[0])]
    proto_path = args.out / "protonet.pt"
    if proto_path.exists():
        proto = ProtoNet(make_encoder(args, stats, 10))
        proto.load_state_dict(torch.load(proto_path, weights_only=True))
        encoders.append(("protonet", proto.encoder))
    for name, encoder in encoders:
        z = cached_features(args, f"{name}_fmnist", encoder, data.fmnist.x)
        d = z.shape[1]
        learners = frozen_learners(d, args.finetune_classifier_epochs) if name == "pretrained" else [
            ("protonet", ProtoNet(nn.Identity()))
        ]  # fmt: skip
        for label, learner in learners:

            def src(shots):
                return EpisodeSampler(z, data.fmnist.y, ways=5, shots=shots, queries=args.queries, seed=shots)  # noqa: E731

            run_episodes(results, "crossdomain", label, learner, src, args.episodes, shots_list(args))


def stage_timing(args, results: Results) -> None:
    """Training throughput of the candidate backbones: SGD steps (forward + backward + update) on
    random 32x32 batches of `--batch` images, channels-last, fp32 and bf16 autocast."""
    from metalab.models.resnet import ResNet18

    candidates = {
        "resnet12 64-160-320-640": lambda: ResNet12(
            3, (64, 160, 320, 640), 5, image_size=32, channels_last=True
        ),
        "resnet12 32-64-128-256": lambda: ResNet12(
            3, (32, 64, 128, 256), 5, image_size=32, channels_last=True
        ),
        "resnet12 16-32-64-128": lambda: ResNet12(3, (16, 32, 64, 128), 5, image_size=32, channels_last=True),
        "resnet18 64-128-256-512 (cifar stem)": lambda: ResNet18(
            3, 5, stem="cifar", image_size=32, channels_last=True
        ),
        "resnet18 16-32-64-128 (cifar stem)": lambda: ResNet18(
            3, 5, stem="cifar", image_size=32, widths=(16, 32, 64, 128), channels_last=True
        ),
    }
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.batch,))
    for name, build in candidates.items():
        for bf16 in (False, True):
            net = build()
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            for i in range(1 + args.timing_steps):
                if i == 1:
                    start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate = args.batch * args.timing_steps / (time.perf_counter() - start)
            k = f"{name} {'bf16' if bf16 else 'fp32'}"
            results.put(
                "timing", k, {"images_per_second": rate, "batch": args.batch, "threads": args.threads}
            )
            print(f"timing {k}: {rate:.0f} images/s", flush=True)


# --- report -------------------------------------------------------------------------------------


def summarise(section: dict, n: str) -> dict | None:
    runs = [v for k, v in section.items() if k.startswith(f"n={n}/")]
    if not runs:
        return None
    acc = torch.tensor([r["accuracy"] for r in runs], dtype=torch.float64)
    return {
        "mean": acc.mean().item(),
        "std": acc.std().item() if len(runs) > 1 else 0.0,
        "draws": len(runs),
        "seconds": sum(r["seconds"] for r in runs) / len(runs),
    }


METHODS = (("scratch", "from scratch"), ("finetune", "pre-trained, fine-tuned"),
           ("linear", "frozen + linear"), ("cosine", "frozen + cosine"))  # fmt: skip


def stage_report(args, results: Results) -> str:
    data = results.load()
    ns = [s for s in args.ns.split(",")]
    lines = ["| images per novel class | " + " | ".join(label for _, label in METHODS) + " |",
             "|---" * (len(METHODS) + 1) + "|"]  # fmt: skip
    curves = {}
    for n in ns:
        cells = []
        for m, _ in METHODS:
            s = summarise(data.get(m, {}), n)
            if s is None:
                cells.append("-")
                continue
            curves.setdefault(m, []).append((5000 if n == "all" else int(n), s))
            spread = f" ± {100 * s['std']:.1f} ({s['draws']} draws)" if s["draws"] > 1 else ""
            cells.append(f"{100 * s['mean']:.1f}{spread}; {s['seconds']:.0f} s")
        lines.append(f"| {'all (5,000)' if n == 'all' else n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    for section, title in (("episodes", "CIFAR-10 novel classes"), ("crossdomain", "Fashion-MNIST")):
        entries = data.get(section, {})
        order = ["protonet", "maml", "pretrained+prototype", "pretrained+linear", "pretrained+cosine"]
        names = sorted({k.split("/")[0] for k in entries}, key=lambda s: (order + [s]).index(s))
        if not names:
            continue
        shots = sorted({int(k.split("/")[1][: -len("shot")]) for k in entries})
        text += f"\n{title}: 5-way episodes, mean accuracy ± 95% CI, 15 queries per class\n\n"
        text += "| method | " + " | ".join(f"{k}-shot" for k in shots) + " | evaluation wall-clock |\n"
        text += "|---" * (len(shots) + 2) + "|\n"
        for name in names:
            cells, secs = [], []
            for k in shots:
                e = entries.get(f"{name}/{k}shot")
                cells.append(
                    f"{100 * e['mean']:.2f} ± {100 * e['ci95']:.2f} ({e['tasks']} episodes)" if e else "-"
                )
                secs.append(f"{e['seconds']:.0f} s" if e else "-")
            text += f"| {name} | " + " | ".join(cells) + " | " + " / ".join(secs) + " |\n"
    text += "\nTraining runs\n\n| run | budget | done | wall-clock | result |\n|---|---|---|---|---|\n"
    pre = data.get("pretrain", {}).get("resnet12")
    if pre:
        text += (
            f"| pre-training, ResNet-12, 25,000 base images | {pre['epochs']:g} epochs | {pre['steps']} "
            f"steps | {pre['seconds']:.0f} s | {100 * pre['base_test_accuracy']:.2f}% on the 5,000 base "
            "test images |\n"
        )
    for name, meta in sorted(data.get("meta_training", {}).items(), reverse=True):
        text += (
            f"| {name} meta-training, {meta['train_shots']}-shot episodes | {meta['seconds'] / 60:.0f} min | "
            f"{meta['iterations']} iterations | {meta['seconds']:.0f} s | - |\n"
        )
    args.tables.parent.mkdir(parents=True, exist_ok=True)
    args.tables.write_text(text)
    plot(curves, data.get("episodes", {}), args.plot)
    print(text)
    return text


def plot(curves: dict, episodes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, label in METHODS:
        if m not in curves:
            continue
        xs = [n for n, _ in curves[m]]
        ys = [100 * s["mean"] for _, s in curves[m]]
        err = [100 * s["std"] for _, s in curves[m]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    for name, style in (("protonet", "s"), ("maml", "^"), ("pretrained+prototype", "D")):
        pts = [(k, episodes.get(f"{name}/{k}shot")) for k in (1, 5)]
        pts = [(k, e) for k, e in pts if e]
        if pts:
            ax.errorbar([k for k, _ in pts], [100 * e["mean"] for _, e in pts],
                        yerr=[100 * e["ci95"] for _, e in pts], marker=style, linestyle=":", capsize=3,
                        label=f"{name} (5-way episodes)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks([1, 5, 20, 100, 5000], ["1", "5", "20", "100", "5,000"])
    ax.set_xlabel("training images per novel class")
    ax.set_ylabel("accuracy on novel-class test images (%)")
    ax.axhline(20, color="grey", lw=0.5)
    ax.set_title("CIFAR-10, 5 novel classes; pre-training on 5 base classes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("all",) + STAGES)
    p.add_argument(
        "--cifar", default=os.environ.get("METALAB_CIFAR10", str(ROOT.parent / "shared/data/cifar10"))
    )
    p.add_argument("--fmnist", default=os.environ.get("METALAB_FASHION_MNIST", FMNIST))
    p.add_argument("--synthetic", type=int, default=0, help="tiny random data, this many images per class")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/transfer", help="weights and features")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/transfer.json")
    p.add_argument("--tables", type=Path, default=ROOT / "benchmarks/results/transfer_tables.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/transfer.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widths", default="16,32,64,128", help="ResNet-12 block widths")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--timing-steps", type=int, default=4, help="timed SGD steps per candidate (stage timing)")
    p.add_argument("--pretrain-epochs", type=float, default=4)
    p.add_argument("--scratch-epochs", type=float, default=3, help="from scratch on all novel images")
    p.add_argument("--finetune-epochs", type=float, default=1, help="fine-tuning on all novel images")
    p.add_argument("--scratch-lr", type=float, default=0.05)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--full-per-class", type=int, default=5000)
    p.add_argument("--ns", default="1,5,20,100,all")
    p.add_argument("--draws", default="1:5,5:5,20:3,100:1,all:1", help="random subsets per n")
    p.add_argument("--small-steps", default="1:60,5:80,20:100,100:150", help="steps per n below all")
    p.add_argument("--feature-steps", type=int, default=300)
    p.add_argument("--finetune-classifier-epochs", type=int, default=100)
    p.add_argument("--shots", default="1,5")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--queries", type=int, default=15, help="queries per class of the test episodes")
    p.add_argument("--meta-shots", type=int, default=5, help="shots of the meta-training episodes")
    p.add_argument("--protonet-minutes", type=float, default=6)
    p.add_argument("--protonet-iterations", type=int, default=20000)
    p.add_argument("--maml-minutes", type=float, default=12)
    p.add_argument("--maml-iterations", type=int, default=60000)
    p.add_argument("--maml-tasks", type=int, default=4)
    p.add_argument("--maml-shots", type=int, default=1, help="shots of MAML's meta-training episodes")
    p.add_argument("--maml-queries", type=int, default=5, help="queries per class in MAML's meta-training")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.results, args.out / "results.lock")
    stages = STAGES[1:] if args.stage == "all" else (args.stage,)  # timing only when asked
    if stages not in (("report",), ("timing",)):
        t0 = time.perf_counter()
        data = load_data(args)
        stats = channel_stats(data.base_train.x)
        machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads}
        results.put("setup", f"machine/{args.stage}", {**machine, "data_seconds": time.perf_counter() - t0})
        results.put(
            "setup", f"args/{args.stage}", {k: str(v) for k, v in vars(args).items() if k not in ("stage",)}
        )
    for stage in stages:
        start = time.perf_counter()
        if stage == "timing":
            stage_timing(args, results)
        elif stage == "pretrain":
            stage_pretrain(args, data, stats, results)
        elif stage in ("scratch", "finetune"):
            stage_novel(args, data, stats, results, stage)
        elif stage == "frozen":
            stage_frozen(args, data, stats, results)
        elif stage == "protonet":
            stage_protonet(args, data, stats, results)
        elif stage == "maml":
            stage_maml(args, data, stats, results)
        elif stage == "episodes":
            stage_episodes(args, data, stats, results)
        elif stage == "crossdomain":
            stage_crossdomain(args, data, stats, results)
        else:
            stage_report(args, results)
        print(f"== stage {stage}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
