"""Multi-process training on torch.distributed (gloo, loopback): the same steps as one process over
the union of the ranks' tasks, and a clear error instead of a hang when a rank dies."""

import json
import multiprocessing
import os
import socket
import time

import torch

from metalab.builders import build_learner, build_optimizer, build_source
from metalab.config import Config
from metalab.tasks import TaskBatch

CONFIG = dict(
    iterations=4,
    meta_batch=6,
    val_every=0,
    checkpoint_every=2,
    log_every=1,
    test_tasks=10,
    threads=1,
    dist_timeout=20.0,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, run_dir, out, die_at):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from metalab import distributed
    from metalab.train import train

    snapshots = []

    def on_step(n, learner):
        if rank == 1 and die_at and n == die_at:
            os._exit(3)  # a crash without any goodbye to the other rank
        snapshots.append([p.detach().clone() for p in learner.parameters()])

    try:
        train(Config(**CONFIG), run_dir, progress=False, on_step=on_step, log=lambda _: None)
        torch.save(snapshots, f"{out}.{rank}.pt")
    except Exception as e:  # the message is what the test checks
        with open(f"{out}.{rank}.err", "w") as f:
            f.write(f"{type(e).__name__}: {e}")
    finally:
        distributed.teardown()


def _start(world, tmp_path, die_at=0):
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker, args=(r, world, port, str(tmp_path / "run"), str(tmp_path / "out"), die_at)
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    return procs


def test_two_processes_take_the_steps_of_one_over_the_union(tmp_path):
    procs = _start(2, tmp_path)
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0, f"rank exited with {p.exitcode}"
    errors = list(tmp_path.glob("out.*.err"))
    assert not errors, errors[0].read_text()
    ranks = [torch.load(tmp_path / f"out.{r}.pt") for r in range(2)]

    # The reference: one process, each step on the union of the two ranks' task batches.
    c = Config(**CONFIG).resolved()
    torch.manual_seed(c.seed)
    learner = build_learner(c)
    optimizer = build_optimizer(c, learner)
    sources = [build_source(c, "train", rank=r) for r in range(2)]
    for step in range(c.iterations):
        parts = [s.sample(c.meta_batch // 2) for s in sources]
        union = TaskBatch(
            *(
                torch.cat([getattr(p, f) for p in parts])
                for f in ("support_x", "support_y", "query_x", "query_y")
            )
        )
        loss, _ = learner.meta_loss(union)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for r in range(2):
            for mine, theirs in zip(learner.parameters(), ranks[r][step]):
                assert torch.allclose(mine, theirs, atol=1e-6), f"rank {r} differs at step {step + 1}"
    # Only rank 0 wrote the run folder, and its checkpoint can resume both ranks.
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and len(state["rng"]["rank_tasks"]) == 2
    assert [
        json.loads(x)["iteration"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ] == [1, 2, 3, 4]


def test_a_dead_rank_stops_the_run_with_a_clear_error(tmp_path):
    started = time.monotonic()
    procs = _start(2, tmp_path, die_at=2)
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode is not None for p in procs), "a rank hung"
    for p in procs:
        if p.exitcode is None:
            p.kill()
    assert procs[1].exitcode == 3
    err = (tmp_path / "out.0.err").read_text()
    assert err.startswith("DistributedError: rank 0:") and "peer process stopped or timed out" in err
    assert time.monotonic() - started < 110
