"""Speed and memory of metalab against the peer libraries, on identical workloads in one run.

    python benchmarks/perf.py                # the full comparison (about 25 minutes on 2 cores)
    python benchmarks/perf.py --smoke        # tiny sizes, a few seconds: what CI runs

Workloads (the performance issue's settings): Conv-4 on 28x28 Omniglot episodes, N-way 1-shot with 15
queries per class; MAML 5-way with one inner SGD step (lr 0.4) and an Adam outer step, second and
first order, meta-batch 32; MAML 20-way with five inner steps (lr 0.1), second order, meta-batch 16;
Prototypical, Matching (full-context embeddings) and Relation Networks on 5-way 1-shot 15-query
episodes against easyfsl.
Peers run where installed (build them with ../shared/tools/peers-venv.sh and `pip install -e .`
into that venv); each is skipped with a message otherwise.

Before timing, every implementation's meta-gradient is computed on the same weights and the same
task batch, in float64, and compared with metalab's: one that differs by more than 1e-4 is reported
and not timed. Then the
implementations are timed in alternation (A, B, C, A, B, C, ...), and the median seconds per
meta-iteration is reported; peak memory (max RSS) is measured for each in a fresh subprocess.
Results go to benchmarks/results/perf.json; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metalab import MAML, ProtoNet, TaskBatch
from metalab.models import Conv4, FastConv4
from metalab.parallel import TaskThreads, available_cores

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "perf.json"


# --- the workload ---------------------------------------------------------------------------------
def episode_source(ways: int, shots: int, queries: int, size: int, seed: int = 0):
    """`sample(T) -> TaskBatch`: real Omniglot meta-training episodes from the in-memory index
    when the shared data is there, else random images."""
    data = ROOT.parent / "shared" / "data" / "omniglot"
    if size == 28 and data.is_dir():
        from metalab.builders import build_source, load_dataset
        from metalab.config import config_from_dict

        c = config_from_dict(
            {
                "benchmark": "omniglot",
                "data_dir": str(data),
                "ways": ways,
                "shots": shots,
                "queries": queries,
                "seed": seed,
            }
        )
        return build_source(c, "train", load_dataset(c)).sample
    g = torch.Generator().manual_seed(seed)

    def sample(tasks: int) -> TaskBatch:
        sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
        qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
        return TaskBatch(
            torch.rand(tasks, ways * shots, 1, size, size, generator=g),
            sy,
            torch.rand(tasks, ways * queries, 1, size, size, generator=g),
            qy,
        )

    return sample


def plain_conv4(hidden: int, ways: int | None, size: int, running_stats: bool = False) -> nn.Module:
    """Conv-4 as a peer's user writes it: stock layers; batch statistics always (as MAML does) unless
    `running_stats` (as metric-based methods use)."""
    layers, channels = [], 1
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden, track_running_stats=running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels, size = hidden, size // 2
    layers.append(nn.Flatten())
    if ways:
        layers.append(nn.Linear(hidden * size * size, ways))
    return nn.Sequential(*layers)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Same values, parameter by parameter in order (both Conv-4s list conv, bn, ..., head)."""
    a, b = list(src.parameters()), list(dst.parameters())
    assert [p.shape for p in a] == [p.shape for p in b]
    with torch.no_grad():
        for p, q in zip(a, b):
            q.copy_(p)


# --- the implementations --------------------------------------------------------------------------
# Each is a class with .params (the meta-parameters, in Conv-4 order) and .step(batch), which
# zeroes the gradients, computes the meta-gradient of the mean query loss and takes an Adam step
# (step(batch, update=False) leaves the weights alone, for the gradient check).
class Impl:
    threads = 2

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = list(model.parameters())
        self.opt = torch.optim.Adam(self.params, lr=1e-3)

    def step(self, batch: TaskBatch, update: bool = True) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.meta_gradient(batch)
        if update:
            self.opt.step()


class MetalabMAML(Impl):
    """metalab's MAML: channels-last Conv-4, task-parallel threads with one intra-op thread each."""

    def __init__(self, model, first_order, workers, steps, lr, autocast=None, checkpoint=False):
        super().__init__(model)
        self.learner = MAML(
            model,
            "classification",
            inner_lr=lr,
            inner_steps=steps,
            first_order=first_order,
            strategy="loop",
            inner_checkpoint=checkpoint,
        )
        self.engine = TaskThreads(self.learner, workers, autocast=autocast) if workers > 1 else None
        self.threads = 1 if workers > 1 else 2

    def meta_gradient(self, batch):
        if self.engine is None:
            self.learner.meta_loss(batch)[0].backward()
        else:
            self.engine.meta_backward(batch)


class L2LMAML(Impl):
    def __init__(self, model, first_order, steps, lr, threads=2):
        import learn2learn as l2l

        super().__init__(model)
        self.maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)
        self.steps = steps
        self.threads = threads

    def meta_gradient(self, batch):
        total = 0.0
        for t in range(batch.num_tasks):
            learner = self.maml.clone()
            for _ in range(self.steps):
                learner.adapt(F.cross_entropy(learner(batch.support_x[t]), batch.support_y[t]))
            total = total + F.cross_entropy(learner(batch.query_x[t]), batch.query_y[t])
        (total / batch.num_tasks).backward()


class HigherMAML(Impl):
    def __init__(self, model, first_order, steps, lr):
        super().__init__(model)
        self.inner = torch.optim.SGD(model.parameters(), lr=lr)
        self.steps = steps
        self.first_order = first_order  # second order only (see maml_impls)

    def meta_gradient(self, batch):
        import higher

        for t in range(batch.num_tasks):
            with higher.innerloop_ctx(
                self.model, self.inner, copy_initial_weights=False, track_higher_grads=not self.first_order
            ) as (fmodel, diffopt):
                for _ in range(self.steps):
                    diffopt.step(F.cross_entropy(fmodel(batch.support_x[t]), batch.support_y[t]))
                (F.cross_entropy(fmodel(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()


class TorchOptMAML(Impl):
    def __init__(self, model, first_order, steps, lr):
        import torchopt

        super().__init__(model)
        self.inner = torchopt.MetaSGD(model, lr=lr)
        self.steps = steps
        self.first_order = first_order

    def meta_gradient(self, batch):
        import torchopt

        state = torchopt.extract_state_dict(self.model, by="reference")
        inner_state = torchopt.extract_state_dict(self.inner)
        for t in range(batch.num_tasks):
            for _ in range(self.steps):
                self.inner.step(F.cross_entropy(self.model(batch.support_x[t]), batch.support_y[t]))
            if self.first_order:
                torchopt.stop_gradient(self.model)
            (F.cross_entropy(self.model(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()
            torchopt.recover_state_dict(self.model, state)
            torchopt.recover_state_dict(self.inner, inner_state)


class MetalabMetric(Impl):
    """A metric-based metalab learner: one `meta_loss` over the episode batch."""

    threads = 2

    def __init__(self, learner):
        super().__init__(learner)
        self.learner = learner

    def meta_gradient(self, batch):
        self.learner.meta_loss(batch)[0].backward()


class EasyFSL(Impl):
    """An easyfsl few-shot classifier: process_support_set, then forward on the queries, per task."""

    def __init__(self, net, loss):
        super().__init__(net)
        self.net, self.loss = net, loss

    def meta_gradient(self, batch):
        for t in range(batch.num_tasks):
            self.net.process_support_set(batch.support_x[t], batch.support_y[t])
            (self.loss(self.net(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()


def _one_hot_mse(scores, y):
    return F.mse_loss(scores, F.one_hot(y, scores.shape[-1]).to(scores.dtype))


def maml_impls(hidden, ways, size, first_order, steps, lr, names=None, checkpoint_variant=False):
    """name -> factory, for the peers that import here."""
    torch.manual_seed(0)
    reference = Conv4(1, hidden, ways, image_size=size)
    state = {k: v.clone() for k, v in reference.state_dict().items()}

    def ours(workers, autocast=None, checkpoint=False):
        def make():
            m = FastConv4(1, hidden, ways, image_size=size)
            m.load_state_dict(state)
            return MetalabMAML(m, first_order, workers, steps, lr, autocast, checkpoint)

        return make

    def peer(cls, **kw):
        def make():
            m = plain_conv4(hidden, ways, size)
            copy_weights(reference, m)
            return cls(m, first_order, steps, lr, **kw)

        return make

    cores = available_cores()
    out = {f"metalab ({cores} task threads)": ours(cores), "metalab (loop, 2 threads)": ours(1)}
    if not first_order and cores > 1:
        out[f"metalab bf16, opt-in ({cores} task threads)"] = ours(cores, torch.bfloat16)
    if checkpoint_variant and not first_order:
        out[f"metalab inner_checkpoint ({cores} task threads)"] = ours(cores, checkpoint=True)
    for name, module, factory in (
        ("learn2learn", "learn2learn", peer(L2LMAML)),
        ("learn2learn (1 thread)", "learn2learn", peer(L2LMAML, threads=1)),
        ("higher", "higher", peer(HigherMAML)),
        ("torchopt", "torchopt", peer(TorchOptMAML)),
    ):
        if first_order and name in ("higher", "torchopt"):
            continue  # neither has a first-order switch of its own; learn2learn's stands for the peers
        with contextlib.redirect_stderr(None), contextlib.redirect_stdout(None):
            try:
                __import__(module)
            except Exception as e:  # noqa: BLE001 - any import failure means: not available
                print(
                    f"  {name}: skipped ({module} does not import: {type(e).__name__})", file=sys.__stdout__
                )
                continue
        out[name] = factory
    return {k: v for k, v in out.items() if names is None or k in names}


def metric_impls(method, hidden, size, names=None):
    """Prototypical (squared Euclidean vs easyfsl's Euclidean), Matching with full-context embeddings
    (easyfsl's are always on) and Relation Networks (easyfsl given metalab's embedding and relation
    modules, same weights): the same backbone and episodes; speed only, as the scores differ by
    design (metric, FCE details, and batch norm over support and query together or apart)."""
    from metalab import MatchingNet, RelationNet
    from metalab.algorithms.metric.relation import RelationEmbedding

    torch.manual_seed(0)
    if method == "relation":
        reference = RelationNet(RelationEmbedding(1, hidden), input_shape=(1, size, size))
    else:
        reference = Conv4(1, hidden, None, image_size=size, norm="batch")
    state = {k: v.clone() for k, v in reference.state_dict().items()}

    def ours():
        if method == "relation":
            learner = RelationNet(RelationEmbedding(1, hidden), input_shape=(1, size, size))
        else:
            m = FastConv4(1, hidden, None, image_size=size, norm="batch")
            learner = ProtoNet(m) if method == "protonet" else MatchingNet(m, fce=True, feature_dim=hidden)
        (learner if method == "relation" else learner.encoder).load_state_dict(state)
        return MetalabMetric(learner)

    out = {"metalab": ours}
    try:
        import easyfsl.methods as methods  # noqa: F401

        def peer():
            if method == "relation":
                net = RelationNet(RelationEmbedding(1, hidden), input_shape=(1, size, size))
                net.load_state_dict(state)
                return EasyFSL(
                    methods.RelationNetworks(
                        net.encoder, feature_dimension=hidden, relation_module=net.relation
                    ),
                    _one_hot_mse,
                )
            m = plain_conv4(hidden, None, size, running_stats=True)
            copy_weights(reference, m)
            if method == "protonet":
                return EasyFSL(methods.PrototypicalNetworks(m), F.cross_entropy)
            return EasyFSL(methods.MatchingNetworks(m, feature_dimension=hidden), F.nll_loss)

        out["easyfsl"] = peer
    except Exception as e:  # noqa: BLE001
        print(f"  easyfsl: skipped (does not import: {type(e).__name__})")
    return {k: v for k, v in out.items() if names is None or k in names}


# --- measuring --------------------------------------------------------------------------------------
def gradient_check(impls: dict, batch: TaskBatch, tolerance: float) -> dict[str, float]:
    """Each implementation's meta-gradient on the same weights and batch against the first's (metalab).

    Compared in float64: on real Omniglot a second-order pass through batch norm over five 1-shot
    support images is ill-conditioned enough that fp32 rounding alone moves gradient entries by up
    to ~1e-4 (benchmarks/fp32_accuracy.py), which would hide a real difference; in float64 the same
    computations agree to ~1e-12. An
    implementation that differs by more than `tolerance` computes something else: it is reported
    and dropped from `impls`, never timed. bf16 is other arithmetic by choice: reported as the
    cosine of its fp32-run gradient to metalab's fp32 gradient.
    """
    exact = TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    grads, flat = {}, lambda gs: torch.cat([g.flatten().float() for g in gs])  # noqa: E731
    for name, make in impls.items():
        low = "bf16" in name
        torch.set_default_dtype(torch.float32 if low else torch.float64)
        try:
            impl = make()
            torch.set_num_threads(impl.threads)
            impl.step(batch if low else exact, update=False)
        finally:
            torch.set_default_dtype(torch.float32)
        grads[name] = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in impl.params
        ]
    first = next(iter(grads))
    diffs = {}
    for name, g in grads.items():
        if "bf16" in name:
            reference = impls[first]()
            torch.set_num_threads(reference.threads)
            reference.step(batch, update=False)
            cosine = F.cosine_similarity(flat(g), flat(p.grad for p in reference.params), dim=0).item()
            print(f"  {name}: cosine of its meta-gradient to fp32's {cosine:.4f}")
            diffs[name] = None
            continue
        diffs[name] = max((a - b).abs().max().item() for a, b in zip(grads[first], g))
        if diffs[name] > tolerance:
            print(
                f"  {name}: NOT TIMED, its meta-gradient differs from {first}'s "
                f"by {diffs[name]:.2e} > {tolerance}"
            )
            del impls[name]
    return diffs


def timing(impls: dict, batch: TaskBatch, repeats: int, warmup: int) -> dict[str, float]:
    built = {name: make() for name, make in impls.items()}
    for impl in built.values():
        torch.set_num_threads(impl.threads)
        for _ in range(warmup):
            impl.step(batch)
    times = {name: [] for name in built}
    for _ in range(repeats):  # alternate, so drifts in machine load hit every implementation alike
        for name, impl in built.items():
            torch.set_num_threads(impl.threads)
            t = time.perf_counter()
            impl.step(batch)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def reset_peak_rss() -> None:
    """Restart the process's peak-RSS mark (Linux: VmHWM via clear_refs), so that what follows is
    measured without loading the data (decoding the Omniglot cache peaks at several GB, which would
    otherwise be every implementation's "peak")."""
    import gc

    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the mark then includes the loading
        pass


def peak_rss_mb() -> float:
    """The process's peak RSS in MB since the last `reset_peak_rss` (or since it started)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(workload: str, name: str, smoke: bool) -> float:
    """Max RSS in MB of a fresh process that builds `name` and takes a few steps of `workload`."""
    cmd = [sys.executable, __file__, "--memory-of", name, "--workload", workload] + (
        ["--smoke"] if smoke else []
    )
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return float(out[-1])


WORKLOADS = {
    # name: (ways, shots, queries, meta-batch, first_order, inner steps, inner lr); metric-based
    # (first_order None): one episode per step
    "maml_5w1s_second_order": (5, 1, 15, 32, False, 1, 0.4),
    "maml_5w1s_first_order": (5, 1, 15, 32, True, 1, 0.4),
    # the MAML paper's 20-way setting: five inner steps with alpha 0.1, meta-batch 16
    "maml_20w1s_5steps_second_order": (20, 1, 15, 16, False, 5, 0.1),
    "protonet_5w1s": (5, 1, 15, 1, None, None, None),
    "matching_fce_5w1s": (5, 1, 15, 1, None, None, None),
    "relation_5w1s": (5, 1, 15, 1, None, None, None),
}


def setup(workload: str, smoke: bool, names=None):
    ways, shots, queries, tasks, first_order, steps, lr = WORKLOADS[workload]
    hidden, size = (8, 16) if smoke else (64, 28)
    if smoke:
        tasks = min(tasks, 4)
    method = workload.split("_")[0] if first_order is None else "maml"
    if method == "relation":
        size = 28  # its embedding keeps 5x5 maps of a 28x28 image for the relation module's two poolings
    sample = episode_source(ways, shots, queries, size)
    batch = sample(tasks)
    if method == "maml":
        impls = maml_impls(hidden, ways, size, first_order, steps, lr, names)
    else:
        impls = metric_impls(method, hidden, size, names)
    return batch, impls, (lambda: sample(tasks))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes and repeats (CI)")
    p.add_argument("--repeats", type=int, help="timed steps per implementation (default 10; smoke 2)")
    p.add_argument("--workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--doc-only",
        action="store_true",
        help="rewrite docs/performance.md from the results file (--out), timing nothing",
    )
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="measure again the peak memory of every row of the results file (--out), "
        "then rewrite it and the page",
    )
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.doc_only or args.memory_only:
        report = json.loads(Path(args.out).read_text())
        if args.memory_only:
            for workload, rows in report["workloads"].items():
                if workload not in args.workloads:
                    continue
                for name, row in rows.items():
                    if "peak_rss_mb" in row:
                        row["peak_rss_mb"] = round(
                            peak_memory(workload, name, "--smoke" in report["command"])
                        )
                        print(f"{workload:32s} {name:40s} {row['peak_rss_mb']:6d} MB", flush=True)
            report["memory_command"] = " ".join(["python benchmarks/perf.py"] + sys.argv[1:])
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        write_doc(report)
        return 0
    if args.memory_of:
        batch, impls, _ = setup(args.workload, args.smoke, [args.memory_of])
        reset_peak_rss()
        impl = impls[args.memory_of]()
        torch.set_num_threads(impl.threads)
        for _ in range(3):
            impl.step(batch)
        print(peak_rss_mb())
        return 0
    repeats = args.repeats or (2 if args.smoke else 10)
    report = {
        "command": " ".join(["python benchmarks/perf.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {available_cores()} cores, torch {torch.__version__}",
        "repeats": repeats,
        "workloads": {},
    }
    for workload in args.workloads:
        print(f"{workload}:", flush=True)
        batch, impls, draw = setup(workload, args.smoke)
        if WORKLOADS[workload][4] is None:
            # easyfsl scores by -Euclidean distance, metalab by -squared Euclidean (Snell et al.):
            # different gradients by design, so only the speed on identical episodes is compared.
            diffs = {name: None for name in impls}
        else:
            diffs = gradient_check(impls, batch, tolerance=1e-4)
        seconds = timing(impls, batch, repeats, warmup=1 if args.smoke else 2)
        rows = {}
        base = seconds.get("learn2learn") or seconds.get("easyfsl")
        for name in impls:
            mem = peak_memory(workload, name, args.smoke)
            rows[name] = {
                "seconds_per_step": round(seconds[name], 4),
                "steps_per_second": round(1 / seconds[name], 3),
                "peak_rss_mb": round(mem),
                "max_grad_diff": diffs[name],
                "speedup_vs_peer": round(base / seconds[name], 2) if base else None,
            }
            ratio = f"  {base / seconds[name]:.2f}x the peer" if base else ""
            diff = "-" if diffs[name] is None else f"{diffs[name]:.1e}"
            print(
                f"  {name:32s} {1 / seconds[name]:7.3f} steps/s  {mem:6.0f} MB  grad diff {diff}{ratio}",
                flush=True,
            )
        rows.update(
            {
                name: {"excluded": f"meta-gradient differs by {d:.2e}"}
                for name, d in diffs.items()
                if name not in impls
            }
        )
        report["workloads"][workload] = rows
        draws = []
        for _ in range(20):
            t = time.perf_counter()
            draw()
            draws.append(time.perf_counter() - t)
        ours = min(v for k, v in seconds.items() if k.startswith("metalab") and "bf16" not in k)
        report.setdefault("sampling", {})[workload] = {
            "seconds_per_draw": round(statistics.median(draws), 5),
            "share_of_metalab_step": round(statistics.median(draws) / ours, 4),
        }
        print(
            f"  sampling one step's episodes: {1e3 * statistics.median(draws):.2f} ms, "
            f"{100 * statistics.median(draws) / ours:.1f}% of metalab's step",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.smoke and Path(args.out) == RESULTS:
        write_doc(report)
    return 0


# The line of docs/performance.md from which the page is written by hand: write_doc rewrites what
# is above it and keeps it and everything below as it is.
HAND_WRITTEN = (
    "<!-- Written by hand from here on: `python benchmarks/perf.py` rewrites the page above this line "
    "from benchmarks/results/*.json and keeps the rest as it is. -->"
)


def write_doc(report: dict) -> None:
    """docs/performance.md: the measured tables, then the page's hand-written part (from
    HAND_WRITTEN on)."""
    lines = [
        "# Performance",
        "",
        f"Measured by `{report['command']}` on {report['date']} ({report['machine']}); median seconds per",
        f"step over {report['repeats']} alternating timed steps per implementation, "
        "peak RSS of a fresh process",
        "while it builds the implementation and takes three steps (torch and the episodes already in memory;",
        "the mark is reset after loading the data)"
        + (f", measured by `{report['memory_command']}`" if "memory_command" in report else "")
        + ", and the largest difference of each implementation's meta-gradient from",
        "metalab's on the same weights and real Omniglot batch, in float64 (checked before timing; in fp32",
        "rounding alone moves entries of this ill-conditioned meta-gradient by up to ~1e-4, see the fp32",
        "accuracy section below). Ratios are against the peer",
        "(learn2learn on its default 2 threads for MAML, easyfsl for the metric-based learners) "
        "in the same run.",
    ]
    for workload, rows in report["workloads"].items():
        lines += [
            "",
            f"## {workload}",
            "",
            "| implementation | steps/s | ratio to the peer | peak RSS (MB) | max grad diff |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            if "excluded" in r:
                lines.append(f"| {name} | not timed: {r['excluded']} | | | |")
                continue
            ratio = f"{r['speedup_vs_peer']:.2f}x" if r["speedup_vs_peer"] else "-"
            diff = "-" if r["max_grad_diff"] is None else f"{r['max_grad_diff']:.1e}"
            lines.append(f"| {name} | {r['steps_per_second']:.3f} | {ratio} | {r['peak_rss_mb']} | {diff} |")
    if report.get("sampling"):
        lines += [
            "",
            "## Episode sampling",
            "",
            "Drawing one training step's episodes from the in-memory index (median of 20 draws), against",
            "metalab's fastest step on the same workload:",
            "",
            "| workload | ms per draw | share of a step |",
            "|---|---|---|",
        ]
        for workload, r in report["sampling"].items():
            lines.append(
                f"| {workload} | {1e3 * r['seconds_per_draw']:.2f} | "
                f"{100 * r['share_of_metalab_step']:.1f}% |"
            )
    precision = ROOT / "benchmarks" / "results" / "precision.json"
    if precision.exists():
        r = json.loads(precision.read_text())
        lines += [
            "",
            "## bf16 on Omniglot",
            "",
            f"`python benchmarks/precision.py --iterations {r['iterations']} "
            f"--test-tasks {r['test_episodes']} --threads {r['task_threads']}`"
            f" on {r['date']} ({r['machine']}): the same MAML run ({r['config']}, same seed and tasks) "
            "in both precisions,",
            f"{r['iterations']} iterations on {r['task_threads']} task thread(s), "
            f"each meta-tested in fp32 on the same {r['test_episodes']} test episodes.",
            "",
            "| precision | test accuracy (95% CI) | seconds per iteration |",
            "|---|---|---|",
        ]
        for name, run in r["runs"].items():
            lines.append(
                f"| {name} | {run['accuracy']:.2f} ± {run['ci95']:.2f} | {run['seconds_per_iteration']:.3f} |"
            )
    scaling = ROOT / "benchmarks" / "results" / "scaling.json"
    if scaling.exists():
        r = json.loads(scaling.read_text())
        lines += [
            "",
            "## Scaling curves",
            "",
            "Time and peak memory per MAML meta-iteration against meta-batch, inner steps (with and without",
            "`inner_checkpoint`), ways and order, metalab against learn2learn, "
            f"measured by `{r['command']}` on",
            f"{r['date']}; the numbers behind the plot are in [scaling.md](scaling.md).",
            "",
            "![time and peak memory per meta-iteration](scaling.png)",
        ]
    out = ROOT / "docs" / "performance.md"
    page = out.read_text() if out.exists() else ""
    if HAND_WRITTEN in page:
        lines += ["", page[page.index(HAND_WRITTEN) :].strip()]
    else:
        lines += ["", HAND_WRITTEN]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
