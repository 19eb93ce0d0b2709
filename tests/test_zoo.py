"""The model zoo: checkpoints added with their figures, loaded by name (`zoo:NAME`) by `metalab eval`,
`predict` and the Python API, refused when unknown, damaged or too large, and an unfinished model
resumed from the zoo into an empty run folder to the same weights as an uninterrupted run.

Each test works in a zoo of its own (`$METALAB_ZOO` in a temporary folder) on tiny runs of a folder
of generated images; the last test meta-tests every model of the real index on the real Omniglot.
"""

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from bad_input_cases import image_folder, png, write

import metalab
from helpers import run
from metalab import zoo
from metalab.checkpoint import load_checkpoint
from metalab.config import config_from_dict
from metalab.experiment import meta_test
from metalab.train import learner_from_checkpoint, train

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny_config(images, iterations=4, **extra):
    keys = dict(benchmark="folder", data_dir=str(images), algorithm="protonet", ways=2, shots=1, queries=2)
    keys.update(iterations=iterations, meta_batch=1, kernels="off", val_every=2, val_tasks=4, log_every=1)
    keys.update(test_tasks=12, threads=1, **extra)
    return config_from_dict(keys).resolved()


def record_with_curve(run_dir):
    """The run's zoo record with its validation curve, as benchmarks/omniglot.py's results carry it."""
    record = zoo.record_from_run(run_dir)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    record["curve"] = [
        {k: m[k] for k in ("iteration", "val_accuracy", "val_ci95", "seconds", "cpu_seconds")}
        for m in metrics
        if "val_accuracy" in m
    ]
    return record


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 4-iteration ProtoNet run on 6 classes of generated images, meta-tested (results.json);
    a 2-class support folder and 3 query images."""
    root = tmp_path_factory.mktemp("zoo")
    images = image_folder(root / "images")
    result = train(tiny_config(images), root / "tiny", progress=False, log=lambda _: None)
    meta_test(result, log=lambda _: None)
    image_folder(root / "support", classes=2, per_class=2)
    for i in range(3):
        write(root / "queries" / f"q{i}.png", png((12, 12), 40 * i))
    return root


@pytest.fixture
def zoo_root(tmp_path, monkeypatch):
    monkeypatch.setenv("METALAB_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


def test_add_records_the_figure_and_eval_by_name_reproduces_it(trained, zoo_root, capsys):
    code, out, err = run(capsys, "zoo", "add", trained / "tiny", "--name", "tiny-protonet")
    assert code == 0, err
    assert "added zoo:tiny-protonet" in out
    entry = zoo.read_index()["tiny-protonet"]
    results = json.loads((trained / "tiny" / "results.json").read_text())
    stored = zoo_root / entry["file"]
    # A finished model is stored with its weights only: the learner's state equal, no resume state.
    kept, source = torch.load(stored, weights_only=False), torch.load(trained / "tiny" / "checkpoint.pt")
    assert not set(zoo.RESUME_ONLY) & set(kept) and {"optimizer", "rng"} <= set(source)
    assert all(torch.equal(kept["learner"][k], v) for k, v in source["learner"].items())
    assert stored.stat().st_size < (trained / "tiny" / "checkpoint.pt").stat().st_size
    assert entry["sha256"] == zoo.sha256(stored) and entry["bytes"] == stored.stat().st_size
    assert entry["figure"]["accuracy"] == round(100 * results["test"][0]["mean"], 2)
    assert entry["figure"]["test_episodes"] == 12 and entry["test"]["test_tasks"] == 12
    assert entry["finished"] is True and entry["iterations"] == 4
    assert zoo.resolve("zoo:tiny-protonet") == stored
    assert zoo.resolve(trained / "tiny" / "checkpoint.pt") == trained / "tiny" / "checkpoint.pt"

    code, out, err = run(capsys, "zoo")
    assert code == 0 and "zoo:tiny-protonet" in out and f"{entry['figure']['accuracy']:.2f}" in out
    # The row's own test settings come with the name: the same 12 episodes, the same figure.
    code, out, err = run(capsys, "eval", "zoo:tiny-protonet", "--quiet", "--json", trained / "by-name.json")
    assert code == 0, err
    again = json.loads((trained / "by-name.json").read_text())["results"][0]
    assert again["tasks"] == 12
    assert round(100 * again["mean"], 2) == entry["figure"]["accuracy"]


def test_predict_by_name_in_the_cli_and_the_python_api(trained, zoo_root, capsys):
    zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["tiny"])
    by_path = metalab.predict(trained / "tiny" / "checkpoint.pt", trained / "support", trained / "queries")
    by_name = metalab.predict("zoo:tiny", trained / "support", trained / "queries")
    assert by_name == by_path and len(by_name) == 3
    code, out, err = run(capsys, "predict", "zoo:tiny", "--support", trained / "support", trained / "queries")
    assert code == 0, err
    assert all(p.query in out and p.label in out for p in by_name)
    learner, config, state = learner_from_checkpoint("zoo:tiny")
    assert state["iteration"] == 4 and config.test_tasks == 12


def test_unknown_damaged_oversize_and_stale_are_refused(trained, zoo_root, monkeypatch, capsys):
    with pytest.raises(zoo.ZooError, match="holds no models"):
        zoo.resolve("zoo:tiny")
    zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["tiny"])
    with pytest.raises(zoo.ZooError, match="unknown zoo model 'tinny'; the zoo in .* holds: tiny"):
        zoo.resolve("zoo:tinny")
    stale = {**zoo.record_from_run(trained / "tiny"), "iterations": 3}
    with pytest.raises(zoo.ZooError, match="measured at iteration 3, .* is at iteration 4"):
        zoo.add(trained / "tiny", [stale], ["stale"])
    with pytest.raises(zoo.ZooError, match="also serves tiny"):
        zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["other"], file="tiny.pt")
    # A name held by a model in another file is refused, not silently taken over.
    with pytest.raises(zoo.ZooError, match="zoo:tiny already names another model \\(file tiny.pt"):
        zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["tiny"], file="newer.pt")
    monkeypatch.setattr(zoo, "MAX_BYTES", 1000)
    with pytest.raises(zoo.ZooError, match="over the zoo's limit"):
        zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["big"], file="big.pt")
    assert set(zoo.read_index()) == {"tiny"}  # nothing refused was recorded
    path = zoo_root / zoo.read_index()["tiny"]["file"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    code, out, err = run(capsys, "eval", "zoo:tiny", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "the file is damaged or was replaced" in err


def test_an_unfinished_model_resumes_from_the_zoo_to_an_uninterrupted_runs_weights(
    trained, tmp_path, zoo_root
):
    images = trained / "images"
    config = tiny_config(images, iterations=8)
    first = train(config, tmp_path / "cell", progress=False, stop_after=4, log=lambda _: None)
    meta_test(first, log=lambda _: None)
    (entry,) = zoo.add(tmp_path / "cell", [record_with_curve(tmp_path / "cell")], ["cell-model"])
    assert entry["finished"] is False and entry["planned_iterations"] == 8 and len(entry["curve"]) == 2

    # A new machine: an empty run folder, seeded from the zoo, resumed.
    seeded = tmp_path / "elsewhere" / "cell"
    line = zoo.seed_run_folder(seeded, config, "cell")
    assert line.startswith(f"seeded {seeded} from zoo:cell-model (iteration 4 of 8)")
    assert [json.loads(x)["iteration"] for x in (seeded / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert zoo.seed_run_folder(seeded, config, "cell") is None  # a folder with a checkpoint is left alone
    logged = []
    resumed = train(config, seeded, resume=True, progress=False, log=logged.append)
    assert any("resuming" in x and "iteration 4" in x for x in logged)
    whole = train(config, tmp_path / "whole", progress=False, log=lambda _: None)
    assert resumed.iteration == whole.iteration == 8
    for (name, a), b in zip(resumed.learner.state_dict().items(), whole.learner.state_dict().values()):
        assert torch.equal(a, b), name
    iterations = [json.loads(x)["iteration"] for x in (seeded / "metrics.jsonl").read_text().splitlines()]
    assert iterations[:2] == [2, 4] and iterations[-1] == 8

    other = tiny_config(images, iterations=8, outer_lr=0.01)
    assert "differs in outer_lr" in zoo.seed_run_folder(tmp_path / "third", other, "cell")
    assert not (tmp_path / "third" / "checkpoint.pt").exists()


def test_an_unfinished_model_over_the_limit_keeps_its_moments_in_bfloat16_and_resumes(
    trained, tmp_path, zoo_root, monkeypatch
):
    config = tiny_config(trained / "images", iterations=8)
    meta_test(
        train(config, tmp_path / "cell", progress=False, stop_after=4, log=lambda _: None), log=lambda _: None
    )
    whole_size = (tmp_path / "cell" / "checkpoint.pt").stat().st_size
    monkeypatch.setattr(zoo, "MAX_BYTES", whole_size - 1)
    (entry,) = zoo.add(tmp_path / "cell", [zoo.record_from_run(tmp_path / "cell")], ["cell-model"])
    assert entry["finished"] is False and entry["optimizer_moments"] == "bfloat16"
    assert entry["bytes"] < whole_size
    stored = torch.load(zoo_root / entry["file"], weights_only=True)
    moments = [v for s in stored["optimizer"]["state"].values() for v in s.values() if v.dim() > 0]
    assert moments and all(v.dtype == torch.bfloat16 for v in moments)

    seeded = tmp_path / "elsewhere" / "cell"
    assert "optimizer moments stored in bfloat16" in zoo.seed_run_folder(seeded, config, "cell")
    resumed = train(config, seeded, resume=True, progress=False, log=lambda _: None)
    whole = train(config, tmp_path / "whole", progress=False, log=lambda _: None)
    assert resumed.iteration == whole.iteration == 8
    for (name, a), b in zip(resumed.learner.state_dict().items(), whole.learner.state_dict().values()):
        assert a.dtype == b.dtype and torch.allclose(a, b, rtol=0, atol=1e-4), name

    monkeypatch.setattr(zoo, "MAX_BYTES", 1000)
    with pytest.raises(zoo.ZooError, match="with its optimizer state in bfloat16 .* over the zoo's limit"):
        zoo.add(tmp_path / "cell", [zoo.record_from_run(tmp_path / "cell")], ["too-big"], file="too-big.pt")


def test_a_finished_model_too_large_in_float32_is_stored_in_float16_with_the_figure_of_those_weights(
    trained, tmp_path, zoo_root, monkeypatch, capsys
):
    source = torch.load(trained / "tiny" / "checkpoint.pt", weights_only=False)
    kept = {k: v for k, v in source.items() if k not in zoo.RESUME_ONLY}
    full = len(zoo._saved(kept))
    half = len(zoo._saved({**kept, "learner": zoo._in_dtype(kept["learner"], torch.float16)}))
    assert half < full
    monkeypatch.setattr(zoo, "MAX_BYTES", (half + full) // 2)
    with pytest.raises(zoo.ZooError, match="in float16 they fit: meta-test the model with its weights"):
        zoo.add(trained / "tiny", [zoo.record_from_run(trained / "tiny")], ["tiny"])

    # Meta-test a copy of the run with its weights rounded to float16, as omniglot.py --weights float16 does.
    shutil.copytree(trained / "tiny", tmp_path / "half")
    config = tiny_config(trained / "images")
    result = train(config, tmp_path / "half", resume=True, progress=False, log=lambda _: None)
    assert result.iteration == 4
    zoo.round_weights(result.learner)
    meta_test(result, log=lambda _: None)
    record = {**zoo.record_from_run(tmp_path / "half"), "weights": "float16"}
    with pytest.raises(zoo.ZooError, match="different precisions"):
        zoo.add(tmp_path / "half", [record, {**record, "weights": "float32"}], ["a", "b"])
    with pytest.raises(zoo.ZooError, match="unfinished .*only a finished one is stored in float16"):
        zoo.add(tmp_path / "half", [{**record, "planned_iterations": 8}], ["a"])
    (entry,) = zoo.add(tmp_path / "half", [record], ["half"])
    assert entry["weights"] == "float16" and entry["bytes"] == half <= zoo.MAX_BYTES
    stored = torch.load(zoo_root / entry["file"], weights_only=True)["learner"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())

    learner, _, _ = learner_from_checkpoint("zoo:half")  # back to float32, equal to the rounded weights
    for (name, a), b in zip(learner.state_dict().items(), result.learner.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    code, out, err = run(capsys, "eval", "zoo:half", "--quiet", "--json", tmp_path / "by-name.json")
    assert code == 0, err
    again = json.loads((tmp_path / "by-name.json").read_text())["results"][0]
    assert round(100 * again["mean"], 2) == entry["figure"]["accuracy"]


def test_a_keep_best_run_is_stored_with_the_weights_its_figure_was_measured_on(
    trained, tmp_path, zoo_root, monkeypatch, capsys
):
    """keep_best: a finished run meta-tested on its best.pt is stored with best.pt's weights, not its
    last ones, and its entry names their iteration; `metalab eval` reproduces the figure. The
    benchmark meta-tests those weights of a finished run only (an unfinished one resumes from its
    latest). A figure of best.pt for an unfinished run, or of another iteration, is refused."""
    import metalab.train as train_module

    # best.pt: the first validation's weights (iteration 2 of 4), whatever the later figures are
    monkeypatch.setattr(train_module, "improves", lambda new, old: old is None)
    result = train(tiny_config(trained / "images", keep_best=True), tmp_path / "best", progress=False)
    assert (result.best_iteration, result.iteration) == (2, 4)
    meta_test(result, log=lambda _: None)
    record = record_with_curve(tmp_path / "best")  # validation points at iterations 2 and 4
    assert (record["best_iteration"], record["iterations"]) == (2, 4)
    (entry,) = zoo.add(tmp_path / "best", [record], ["best"])
    assert (entry["best_iteration"], entry["iterations"], entry["finished"]) == (2, 4, True)
    stored = torch.load(zoo_root / entry["file"], weights_only=True)["learner"]
    best, last = (
        torch.load(tmp_path / "best" / f, weights_only=False)["learner"] for f in ("best.pt", "checkpoint.pt")
    )
    assert all(torch.equal(stored[k], v) for k, v in best.items())
    assert not all(torch.equal(best[k], last[k]) for k in best)
    code, out, err = run(capsys, "eval", "zoo:best", "--quiet", "--json", tmp_path / "again.json")
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())["results"][0]
    assert round(100 * again["mean"], 2) == entry["figure"]["accuracy"]
    code, out, err = run(capsys, "zoo")
    assert code == 0 and "4 of 4 (best.pt: 2)" in out
    # Trained further, it continues from the weights stored, at their iteration and curve.
    more = tiny_config(trained / "images", keep_best=True, iterations=6)
    assert "iteration 2;" in zoo.seed_from_weights(tmp_path / "more", more, "best")
    assert load_checkpoint(tmp_path / "more" / "checkpoint.pt")["iteration"] == 2
    metrics = (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in metrics] == [2]

    with pytest.raises(zoo.ZooError, match=r"unfinished \(iteration 4 of 8\) and its figure is of best.pt"):
        zoo.add(tmp_path / "best", [{**record, "planned_iterations": 8}], ["a"])
    with pytest.raises(zoo.ZooError, match="weights of iteration 3, .*best.pt holds iteration 2"):
        zoo.add(tmp_path / "best", [{**record, "best_iteration": 3}], ["a"])
    with pytest.raises(zoo.ZooError, match="weights of different iterations"):
        zoo.add(tmp_path / "best", [record, {**record, "best_iteration": None}], ["a", "b"])

    spec = importlib.util.spec_from_file_location("omniglot_bench", REPO / "benchmarks" / "omniglot.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench._load_best(result, planned=8) is None  # unfinished: its latest weights
    assert all(torch.equal(result.learner.state_dict()[k], v) for k, v in last.items())
    assert bench._load_best(result, planned=4) == 2
    assert all(torch.equal(result.learner.state_dict()[k], v) for k, v in best.items())
    assert bench._of_planned(4, {**record, "planned_iterations": 4}) == "4 of 4 (best.pt: 2)"


@pytest.mark.data
def test_every_model_of_the_real_index_reproduces_its_row(monkeypatch, request):
    """`metalab eval zoo:NAME` on the real test classes agrees with the row's figure within three
    standard errors of the difference: 50 test episodes of a 5-way cell tested in fewer than 60
    steps x ways; 10 where a test episode is heavier (20-way cells: Relation Networks score 300 x 20
    pairs; many inner steps: Reptile's 50, the LSTM meta-learner's 12) or adapts once per query
    (Reptile non-transductive), so the whole zoo takes a minute or two. A few episodes of a
    model near 100% often all score alike, so the episodes' spread is taken as the larger of theirs
    and the row's (from its 1,000)."""
    from metalab.builders import build_source
    from metalab.evaluate import evaluate

    monkeypatch.delenv("METALAB_ZOO", raising=False)
    models = zoo.list_models()
    if not models:
        pytest.skip(f"the zoo in {zoo.zoo_dir()} holds no models yet")
    data = request.getfixturevalue("omniglot")  # the real Vinyals split (skips where it is absent)
    for m in models:
        learner, c, _ = learner_from_checkpoint(zoo.PREFIX + m["name"])
        steps = (c.eval_steps or [None])[0]
        ways = c.test_ways or c.ways
        light = ways <= 5 and (steps or 0) * ways < 60 and m["test"].get("transductive") is not False
        episodes = 50 if light else 10
        r = evaluate(learner, build_source(c, "test", data), episodes, steps=steps)
        row_se = m["figure"]["ci95"] / 1.96
        spread = max(
            100 * r.ci95 / 1.96 * math.sqrt(episodes), row_se * math.sqrt(m["figure"]["test_episodes"])
        )
        allowed = 3 * math.sqrt(row_se**2 + spread**2 / episodes)
        gap = abs(100 * r.mean - m["figure"]["accuracy"])
        assert gap <= allowed, (m["name"], r, m["figure"], f"allowed {allowed:.2f} points")


def test_the_shipped_index_is_consistent():
    """Every model of the package's index names a file that is there, of its recorded sha256 and
    size, under the size limit."""
    if os.environ.get("METALAB_ZOO"):
        pytest.skip(f"METALAB_ZOO points to {os.environ['METALAB_ZOO']}, not the package's zoo")
    root = zoo.zoo_dir()
    for m in zoo.list_models(root):
        path = root / m["file"]
        assert path.is_file(), m["name"]
        assert zoo.sha256(path) == m["sha256"] and path.stat().st_size == m["bytes"] <= zoo.MAX_BYTES
        assert zoo.resolve(zoo.PREFIX + m["name"]) == path


def _bench_zoo():
    spec = importlib.util.spec_from_file_location("zoo_bench", REPO / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_add_puts_every_row_of_one_model_in_one_file(
    trained, tmp_path, zoo_root, monkeypatch, capsys
):
    """`benchmarks/zoo.py add protonet_5w1s`: the 5-way cell and the 20-way cell its run also
    tested share one file; loading the 20-way name tests 20-way."""
    bench = _bench_zoo()
    out, results = tmp_path / "out", tmp_path / "results"
    shutil.copytree(trained / "tiny", out / "protonet_5w1s")
    figure = dict(algorithm="protonet", shots=1, test_episodes=12, test_queries=2, iterations=4)
    figure.update(trained_by="protonet_5w1s", planned_iterations=4, threads=1, train_cpu_seconds=3)
    for cell, ways, accuracy in (("protonet_5w1s", 5, 97.5), ("protonet_20w1s", 20, 91.25)):
        record = {**figure, "cell": cell, "ways": ways, "accuracy": accuracy, "ci95": 0.5}
        write(results / f"{cell}.json", json.dumps(record))
    argv = ["add", "protonet_5w1s", "--out", str(out), "--results", str(results)]
    assert bench.main(argv) == 0
    models = zoo.read_index()
    assert set(models) == {"protonet-omniglot-5w1s", "protonet-omniglot-20w1s"}
    five, twenty = models["protonet-omniglot-5w1s"], models["protonet-omniglot-20w1s"]
    assert five["file"] == twenty["file"] == "protonet_5w1s.pt" and five["sha256"] == twenty["sha256"]
    assert (
        twenty["config"] == "configs/omniglot/protonet_20w1s.yaml" and twenty["figure"]["accuracy"] == 91.25
    )
    assert (
        five["command"]
        == "python benchmarks/omniglot.py train configs/omniglot/protonet_5w1s.yaml --threads 1"
    )
    assert (
        five["train_cpu_seconds"] == 3
        and five["test"]["test_ways"] == 5
        and twenty["test"]["test_ways"] == 20
    )
    _, config, _ = learner_from_checkpoint("zoo:protonet-omniglot-20w1s")
    assert (config.test_ways, config.test_tasks, config.test_queries) == (20, 12, 2)
    capsys.readouterr()

    monkeypatch.setattr(zoo, "MAX_BYTES", 1000)
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zoo: error: ") and "over the zoo's limit of" in err
    assert bench.main(["add", "nope_5w1s", "--results", str(results)]) == 2
    assert "no results file" in capsys.readouterr().err


@pytest.mark.data
def test_gap_benchmark_measures_a_zoo_model_on_each_split(tmp_path, monkeypatch, capsys, request):
    """benchmarks/omniglot_gap.py: the same test-shaped episodes from the meta-train, meta-val and
    meta-test classes, each split's figure kept with the model's iteration."""
    request.getfixturevalue("omniglot_dir")  # the real data (skips where it is absent)
    monkeypatch.delenv("METALAB_ZOO", raising=False)
    spec = importlib.util.spec_from_file_location("gap_bench", REPO / "benchmarks" / "omniglot_gap.py")
    gap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap)
    monkeypatch.setattr(gap, "RESULTS", tmp_path / "gap.json")
    assert gap.main(["zoo:protonet-omniglot-5w1s", "--tasks", "20"]) == 0
    entry = json.loads((tmp_path / "gap.json").read_text())["zoo:protonet-omniglot-5w1s"]
    assert (entry["ways"], entry["shots"], entry["queries"], entry["tasks"]) == (5, 1, 15, 20)
    assert entry["iterations"] == zoo.read_index()["protonet-omniglot-5w1s"]["iterations"]
    for split in ("train", "val", "test"):
        assert 80.0 < entry[split]["accuracy"] <= 100.0  # a trained model, far above chance (20%)
    assert entry["gap_train_val"] == round(entry["train"]["accuracy"] - entry["val"]["accuracy"], 2)
    assert "| `zoo:protonet-omniglot-5w1s` |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not in the zoo: zoo:nope"):
        gap.main(["zoo:nope"])


def test_a_finished_model_trains_further_from_its_weights_with_fresh_moments(trained, tmp_path, zoo_root):
    (entry,) = zoo.add(trained / "tiny", [record_with_curve(trained / "tiny")], ["tiny"])
    assert entry["finished"] is True and entry["iterations"] == 4 and len(entry["curve"]) == 2
    further = tiny_config(trained / "images", iterations=8)
    with pytest.raises(zoo.ZooError, match="no finished model trained by other"):
        zoo.seed_from_weights(tmp_path / "a", further, "other")
    with pytest.raises(zoo.ZooError, match="has trained 4 iterations and the config plans 4"):
        zoo.seed_from_weights(tmp_path / "b", tiny_config(trained / "images"), "tiny")
    with pytest.raises(zoo.ZooError, match="differs in outer_lr"):
        zoo.seed_from_weights(
            tmp_path / "c", tiny_config(trained / "images", iterations=8, outer_lr=0.01), "tiny"
        )
    assert not any((tmp_path / x / "checkpoint.pt").exists() for x in "abc")

    seeded = tmp_path / "further"
    line = zoo.seed_from_weights(seeded, further, "tiny")
    assert line.startswith(f"seeded {seeded} from zoo:tiny's weights (iteration 4;")
    assert zoo.seed_from_weights(seeded, further, "tiny") is None  # a folder with a checkpoint is left alone
    start = torch.load(seeded / "checkpoint.pt", weights_only=False)
    kept = torch.load(zoo_root / entry["file"], weights_only=False)["learner"]
    assert start["iteration"] == 4 and not start["optimizer"]["state"]  # fresh moments
    assert all(torch.equal(start["learner"][k], v) for k, v in kept.items())
    logged = []
    resumed = train(further, seeded, resume=True, progress=False, log=logged.append)
    assert any("resuming" in x and "iteration 4" in x for x in logged) and resumed.iteration == 8
    assert any(not torch.equal(a, kept[k]) for k, a in resumed.learner.state_dict().items())
    iterations = [json.loads(x)["iteration"] for x in (seeded / "metrics.jsonl").read_text().splitlines()]
    assert iterations[:3] == [2, 4, 5] and iterations[-1] == 8  # the stored curve, then the new run's


def test_benchmark_add_names_a_sibling_cell_after_the_given_name(tmp_path, monkeypatch):
    """`--name` names the first cell; a cell whose config stem extends the first's takes the name
    plus that suffix instead of the default, which another model may hold."""
    bench = _bench_zoo()
    out, results = tmp_path / "out", tmp_path / "results"
    first, sibling = "fomaml_5w1s_random_authors_model", "fomaml_5w1s_random_authors_model_1query"
    write(out / first / "config.yaml", "threads: 2\n")
    figure = dict(algorithm="fomaml", ways=5, shots=1, trained_by=first, iterations=4, curve=[])
    for cell in (first, sibling):
        write(results / f"{cell}.json", json.dumps({**figure, "cell": cell}))
    seen = {}
    monkeypatch.setattr(
        bench.zoo, "add", lambda run_dir, records, names, **kw: seen.update(names=names) or []
    )
    argv = ["add", first, "--name", "fomaml-authors", "--out", str(out), "--results", str(results)]
    assert bench.main(argv) == 0
    assert seen["names"] == ["fomaml-authors", "fomaml-authors-1query"]
