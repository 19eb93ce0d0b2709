"""The training loop: learning, metrics log, atomic checkpoints, resume equality, evaluation."""

import json

import pytest
import torch

from metalab import checkpoint as ckpt_module
from metalab.builders import build_learner, build_source
from metalab.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metalab.config import Config
from metalab.evaluate import confidence_interval, evaluate
from metalab.train import learner_from_checkpoint, train


def small(**kw):
    values = dict(
        iterations=40,
        meta_batch=5,
        val_every=20,
        val_tasks=20,
        checkpoint_every=10,
        log_every=5,
        test_tasks=50,
    )
    values.update(kw)
    return Config(**values)


def test_maml_learns_sine_waves(tmp_path):
    """A short real run: the validation MSE after adaptation falls well below the untrained model's."""
    c = small(iterations=600, meta_batch=10, val_every=600, val_tasks=200, test_shots=10, checkpoint_every=0)
    result = train(c, tmp_path / "run", progress=False)
    torch.manual_seed(c.seed)  # the same initialisation train() started from
    before = evaluate(build_learner(result.config), build_source(result.config, "val"), 200)
    after = result.last_val
    assert after.mean < 0.6 * before.mean, (before, after)
    # The checkpoint holds the trained learner.
    reloaded, _, _ = learner_from_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert evaluate(reloaded, build_source(result.config, "val"), 200) == after


def test_metrics_log_and_checkpoint_contents(tmp_path):
    result = train(small(), tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert "val_mse" in lines[3] and "val_ci95" in lines[3]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == 40 == result.iteration
    assert set(state) >= {"learner", "optimizer", "schedule", "rng", "iteration", "config"}
    assert state["config"]["algorithm"] == "maml"
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "reptile"])
def test_resume_equals_uninterrupted_run(tmp_path, algorithm):
    c = small(algorithm=algorithm, val_every=15)
    full = train(c, tmp_path / "full", progress=False)
    train(c, tmp_path / "cut", progress=False, stop_after=20)
    # Pretend the crash came after more iterations were logged than checkpointed.
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": 25, "loss": 123.0}) + "\n")
    resumed = train(c, tmp_path / "cut", progress=False, resume=True)
    for (k, a), b in zip(full.learner.state_dict().items(), resumed.learner.state_dict().values()):
        assert torch.equal(a, b), k
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()

    def strip(lines):
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("seconds", "cpu_seconds")} for x in lines
        ]

    assert strip(full_log) == strip(cut_log)
    # CPU time carries over a resumption: the resumed run's records continue the cut run's.
    cpu = [json.loads(x)["cpu_seconds"] for x in cut_log]
    assert cpu == sorted(cpu) and cpu[-1] > 0


def test_resume_drops_a_torn_last_metrics_line_and_refuses_a_foreign_one(tmp_path):
    c = small(iterations=20)
    train(c, tmp_path / "run", progress=False, stop_after=10)
    metrics = tmp_path / "run" / "metrics.jsonl"
    intact = metrics.read_text()
    metrics.write_text(intact + '{"iteration": 15, "lo')  # killed while writing this line
    train(c, tmp_path / "run", progress=False, resume=True)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(5, 21, 5))
    train(c, tmp_path / "other", progress=False, stop_after=10)
    metrics = tmp_path / "other" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")  # not a record, not the last line
    with pytest.raises(CheckpointError, match="metrics.jsonl, line 2 is not a metrics record"):
        train(c, tmp_path / "other", progress=False, resume=True)
    assert metrics.read_text().splitlines()[1] == "[1, 2]"  # nothing was deleted


def test_resume_refuses_a_different_config_and_fresh_run_refuses_to_overwrite(tmp_path):
    train(small(), tmp_path, progress=False, stop_after=10)
    with pytest.raises(CheckpointError, match="config differs in inner_lr"):
        train(small(inner_lr=0.5), tmp_path, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="pass --resume"):
        train(small(), tmp_path, progress=False)
    # More iterations is a budget change and is allowed.
    assert train(small(iterations=50), tmp_path, progress=False, resume=True).iteration == 50


def test_resume_may_change_the_schedule_only_where_it_agrees_with_the_past(tmp_path):
    """A run at a constant rate continued as a step schedule whose first drop comes at the checkpoint
    is, weights and log alike, the run that used that schedule from the start; a drop before the
    checkpoint would make the config lie about the trained iterations and is refused."""
    step = dict(lr_schedule="step", lr_decay_every=20, lr_decay_factor=0.1)
    full = train(small(algorithm="metasgd", **step), tmp_path / "full", progress=False)
    train(small(algorithm="metasgd"), tmp_path / "cut", progress=False, stop_after=20)
    with pytest.raises(
        CheckpointError,
        match=r"lr_schedule \(the new schedule's learning rate at iteration 10, 0.0001, is not the 0.001",
    ):
        train(
            small(algorithm="metasgd", **{**step, "lr_decay_every": 10}),
            tmp_path / "cut",
            progress=False,
            resume=True,
        )
    resumed = train(small(algorithm="metasgd", **step), tmp_path / "cut", progress=False, resume=True)
    for (k, a), b in zip(full.learner.state_dict().items(), resumed.learner.state_dict().values()):
        assert torch.equal(a, b), k
    logs = [
        [
            (r["iteration"], r["lr"])
            for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        ]
        for run in ("full", "cut")
    ]
    # Records hold the rate after their iteration's step, so the cut run's last one (iteration 20) still
    # gives its constant schedule's next rate; every other record is the same.
    assert [r for r in logs[0] if r[0] != 20] == [r for r in logs[1] if r[0] != 20]
    assert logs[1][-2:] == [(35, pytest.approx(1e-4)), (40, pytest.approx(1e-5))]
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["config"]["lr_schedule"] == "step"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1, "config": {}, "learner": {}, "weights": torch.ones(3)})

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"iteration": 3, "config": {}, "learner": {"w": torch.randn(100, 100)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"some": "dict"}, other)
    with pytest.raises(CheckpointError, match="not a metalab checkpoint"):
        load_checkpoint(other)
    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2 : len(flipped) // 2 + 64] = bytes(64)  # 64 bytes inside the weights
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="damaged: its entry '.*' fails its CRC check"):
        load_checkpoint(tmp_path / "flipped.pt")
    runs_code = tmp_path / "code.pt"
    torch.save({"format": ckpt_module.FORMAT, "iteration": 1, "hook": CheckpointError("x")}, runs_code)
    with pytest.raises(CheckpointError, match="refused: loading it would run code"):
        load_checkpoint(runs_code)
    save_checkpoint(tmp_path / "partial.pt", {"iteration": 3, "learner": {}})
    with pytest.raises(CheckpointError, match="lacks 'config' \\(the resolved config\\)"):
        load_checkpoint(tmp_path / "partial.pt")
    save_checkpoint(tmp_path / "typed.pt", {"iteration": "3", "config": {}, "learner": {}})
    with pytest.raises(CheckpointError, match="'iteration' \\(the iteration\\) is a str, not a int"):
        load_checkpoint(tmp_path / "typed.pt")
    with pytest.raises(CheckpointError, match="lacks 'optimizer'"):
        load_checkpoint(good, resuming=True)


def test_resume_refuses_weights_of_another_shape(tmp_path):
    c = small(iterations=20)
    train(c, tmp_path, progress=False, stop_after=10)
    state = load_checkpoint(tmp_path / "checkpoint.pt", resuming=True)
    state["learner"] = {k: torch.zeros(3) for k in state["learner"]}
    save_checkpoint(tmp_path / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="its saved state does not fit this run \\(.*size mismatch"):
        train(c, tmp_path, progress=False, resume=True)


def test_confidence_interval():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, ci = confidence_interval(values)
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * values.std().item() / 2)


def test_evaluate_is_deterministic_on_fixed_test_tasks(tmp_path):
    result = train(small(iterations=10, val_every=0), tmp_path, progress=False)
    a = evaluate(result.learner, build_source(result.config, "test"), 30, steps=2)
    b = evaluate(result.learner, build_source(result.config, "test"), 30, steps=2)
    assert a == b and a.tasks == 30 and a.steps == 2


def test_max_minutes_stops_with_a_checkpoint_and_resume_continues(tmp_path):
    c = small(iterations=10_000, val_every=0, checkpoint_every=0, max_minutes=0.02)  # 1.2 s
    result = train(c, tmp_path, progress=False, log=lambda _: None)
    assert 0 < result.iteration < 10_000
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == result.iteration
    again = train(
        small(iterations=result.iteration + 5, val_every=0, checkpoint_every=0),
        tmp_path,
        progress=False,
        resume=True,
        log=lambda _: None,
    )
    assert again.iteration == result.iteration + 5


def test_a_diverging_run_stops_keeping_its_last_good_checkpoint(tmp_path):
    from metalab.train import TrainingDiverged

    c = small(iterations=40, outer_lr=1e6, checkpoint_every=1)
    with pytest.raises(
        TrainingDiverged, match=r"training diverged at iteration (\d+): .*keeps iteration"
    ) as info:
        train(c, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(v.isfinite().all() for v in state["learner"].values())
    assert 0 < state["iteration"] < int(info.value.args[0].split("iteration ")[1].split(":")[0])
    state["learner"] = {k: torch.full_like(v, float("nan")) for k, v in state["learner"].items()}
    save_checkpoint(tmp_path / "nan.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="holds non-finite weights"):
        learner_from_checkpoint(tmp_path / "nan.pt")


def test_evaluation_says_when_the_adaptation_diverges(tmp_path):
    result = train(small(iterations=5, val_every=0), tmp_path, progress=False)
    result.learner.inner_lr = 1e6  # an inner step this large takes the adapted weights to inf / nan
    r = evaluate(result.learner, build_source(result.config, "test"), 10, steps=20)
    assert r.diverged == 10 and "not finite on 10 of 10 tasks: the adaptation diverged" in str(r)


def test_keep_best_keeps_the_weights_of_the_best_validation_and_meta_tests_them(tmp_path):
    """keep_best: best.pt holds the weights that scored the run's lowest validation MSE (evaluating
    them again gives that figure), and the final meta-test is theirs, not the last weights'."""
    from metalab.experiment import meta_test

    c = small(iterations=60, val_every=5, val_tasks=10, test_tasks=30, keep_best=True, outer_lr=0.01)
    result = train(c, tmp_path / "run", progress=False)
    vals = [(r["val_mse"], r["iteration"]) for r in result.history if "val_mse" in r]
    best_mse, best_at = min(vals)
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (
        (state["iteration"], state["validation"]["mean"])
        == (best_at, best_mse)
        == (
            result.best_iteration,
            result.best_val.mean,
        )
    )
    best, config, _ = learner_from_checkpoint(tmp_path / "run" / "best.pt")
    assert evaluate(best, build_source(config, "val"), c.val_tasks).mean == best_mse
    record = meta_test(result, log=lambda _: None)
    assert record["test"][0]["mean"] == evaluate(best, build_source(config, "test"), c.test_tasks).mean
    if best_at != c.iterations:
        assert record["weights"] == {"file": "best.pt", "iteration": best_at}
        last = evaluate(result.learner, build_source(config, "test"), c.test_tasks).mean
        assert record["test"][0]["mean"] != last
    else:
        assert "weights" not in record
    # Without keep_best there is no best.pt.
    train(small(iterations=10, val_every=5), tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain" / "best.pt").exists()


def test_keep_top_keeps_the_weights_of_the_best_validation_figures_through_a_resumption(tmp_path):
    """keep_top: top/ holds one file for each of the K lowest validation MSEs, each with its
    iteration and figure (evaluating it again gives that figure); a resumed run continues the same
    set as an uninterrupted one; a fresh run refuses a folder that holds another run's top/."""
    c = small(iterations=60, val_every=5, val_tasks=10, keep_top=3, outer_lr=0.01)
    full = train(c, tmp_path / "full", progress=False)
    vals = sorted((r["val_mse"], r["iteration"]) for r in full.history if "val_mse" in r)
    files = sorted((tmp_path / "full" / "top").glob("*.pt"))
    assert [p.name for p in files] == sorted(f"iteration-{it:08d}.pt" for _, it in vals[:3])
    for path in files:
        state = load_checkpoint(path)
        learner, config, _ = learner_from_checkpoint(path)
        again = evaluate(learner, build_source(config, "val"), c.val_tasks).mean
        assert again == state["validation"]["mean"] == dict((it, m) for m, it in vals)[state["iteration"]]
    train(c, tmp_path / "cut", progress=False, stop_after=25)
    train(c, tmp_path / "cut", progress=False, resume=True)
    assert [p.name for p in sorted((tmp_path / "cut" / "top").glob("*.pt"))] == [p.name for p in files]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "top").mkdir()
    (tmp_path / "other" / "top" / files[0].name).write_bytes(files[0].read_bytes())
    with pytest.raises(CheckpointError, match="top holds another run's weights"):
        train(c, tmp_path / "other", progress=False)
    # Without keep_top there is no top/.
    train(small(iterations=10, val_every=5), tmp_path / "plain", progress=False)
    assert not (tmp_path / "plain" / "top").exists()


def test_an_unfinished_keep_best_run_is_meta_tested_on_its_latest_weights(tmp_path):
    """One rule for `metalab train`'s meta-test, the benchmark's and the zoo's: best.pt stands for a
    run only once it has trained its planned iterations; before that its figure is of the weights
    its resumable checkpoint holds."""
    from metalab.experiment import meta_test
    from metalab.run import tested_best

    c = small(iterations=40, val_every=5, val_tasks=10, test_tasks=20, keep_best=True, outer_lr=0.01)
    cut = train(c, tmp_path / "cut", progress=False, stop_after=20)
    assert cut.best_iteration is not None
    record = meta_test(cut, log=lambda _: None)
    assert "weights" not in record and record["iterations"] == 20
    latest = evaluate(cut.learner, build_source(cut.config, "test"), c.test_tasks).mean
    assert record["test"][0]["mean"] == latest
    # Measured against a budget it has reached, the same run is tested on best.pt's weights.
    assert tested_best(True, 20, cut.best_iteration, planned=20) == cut.best_iteration
    assert tested_best(False, 40, 15, planned=40) is None and tested_best(True, 40, None, planned=40) is None


def test_keep_best_survives_a_resumption_and_a_damaged_best_file_stops_it(tmp_path):
    c = small(iterations=40, val_every=5, val_tasks=10, keep_best=True, outer_lr=0.01)
    full = train(c, tmp_path / "full", progress=False)
    train(c, tmp_path / "cut", progress=False, stop_after=20)
    resumed = train(c, tmp_path / "cut", progress=False, resume=True)
    assert resumed.best_iteration == full.best_iteration and resumed.best_val == full.best_val
    a, b = (load_checkpoint(tmp_path / run / "best.pt")["learner"] for run in ("full", "cut"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    train(c, tmp_path / "broken", progress=False, stop_after=20)
    (tmp_path / "broken" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt.*move it away to resume"):
        train(c, tmp_path / "broken", progress=False, resume=True)
    assert load_checkpoint(tmp_path / "broken" / "checkpoint.pt")["iteration"] == 20


def test_improves_compares_in_each_metric_s_direction():
    from metalab.evaluate import EvalResult
    from metalab.run import improves

    def r(metric, mean):
        return EvalResult(metric, mean, 0.01, 10)

    assert improves(r("accuracy", 0.5), None) and not improves(r("accuracy", float("nan")), None)
    assert improves(r("accuracy", 0.6), r("accuracy", 0.5)) and not improves(
        r("accuracy", 0.5), r("accuracy", 0.5)
    )
    assert improves(r("mse", 0.4), r("mse", 0.5)) and not improves(r("mse", 0.6), r("mse", 0.5))
    assert improves(r("return", -10.0), r("return", -20.0))
