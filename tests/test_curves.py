"""Validation curves: reading them from metrics, time to an accuracy (first crossing, never reached,
the extrapolated estimate), their plots, `metalab report` on them and benchmarks/omniglot.py's
`curves` and `table`, all on small synthetic metrics files."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from metalab.cli import main
from metalab.config import load_config
from metalab.curves import LearnerCurve, time_to_accuracy, validation_curve
from metalab.report import accuracy_curves, accuracy_curves_figure, time_to_accuracy_figure

ROOT = Path(__file__).resolve().parent.parent


def point(iteration, accuracy, cpu_minutes, ci=0.005):
    return {
        "iteration": iteration,
        "val_accuracy": accuracy,
        "val_ci95": ci,
        "seconds": 2 * 60 * cpu_minutes,
        "cpu_seconds": 60 * cpu_minutes,
    }


def log_linear(minutes, ci=0.005):
    """Points on accuracy = 50% + 10% x ln(CPU minutes): a straight line on a log-time axis."""
    return [point(100 * (i + 1), 0.5 + 0.1 * math.log(m), m, ci) for i, m in enumerate(minutes)]


def test_validation_curve_keeps_the_validation_records_one_per_iteration_in_order():
    records = [
        {"iteration": 10, "loss": 1.0, "seconds": 1.0, "cpu_seconds": 0.9},
        {
            "iteration": 20,
            "loss": 0.9,
            "val_accuracy": 0.5,
            "val_ci95": 0.02,
            "seconds": 2.0,
            "cpu_seconds": 1.8,
        },
        {"iteration": 40, "val_accuracy": 0.7, "val_ci95": 0.01, "seconds": 4.0},
        {"iteration": 20, "val_accuracy": 0.6, "val_ci95": 0.02, "seconds": 2.5, "cpu_seconds": 2.2},
        {"iteration": 30, "val_mse": 0.3, "val_ci95": 0.1},
    ]
    curve = validation_curve(records)
    assert [p["iteration"] for p in curve] == [20, 40]
    assert curve[0] == {
        "iteration": 20,
        "val_accuracy": 0.6,
        "val_ci95": 0.02,
        "seconds": 2.5,
        "cpu_seconds": 2.2,
    }
    assert curve[1]["cpu_seconds"] is None  # logged before CPU time was recorded
    assert validation_curve([{"iteration": 5, "val_mse": 0.2}]) == []


def test_time_to_accuracy_is_the_first_validation_point_at_or_above_the_target():
    curve = [point(100, 0.80, 1.0), point(200, 0.95, 2.5), point(300, 0.93, 3.0), point(400, 0.97, 4.0)]
    t = time_to_accuracy(curve, 95.0)
    assert t.reached and t.minutes == 2.5 and t.iteration == 200
    assert t.text() == "2.5 CPU-min (iteration 200)"
    t = time_to_accuracy(curve, 96.0)
    assert t.reached and t.minutes == 4.0 and t.iteration == 400
    # Later, longer runs read in whole minutes with thousands separated.
    t = time_to_accuracy([point(12_000, 0.99, 125.4)], 98.0)
    assert t.text() == "125 CPU-min (iteration 12,000)"


def test_not_reached_on_a_flat_curve_gives_the_best_and_the_time_spent_but_no_estimate():
    flat = [0.90, 0.902, 0.899, 0.901, 0.90]
    # The early rise is outside the fitted window.
    curve = [point(50, 0.80, 0.5)] + [point(100 * (i + 1), a, i + 1.0) for i, a in enumerate(flat)]
    t = time_to_accuracy(curve, 95.0)
    assert not t.reached and t.estimate is None
    assert t.best == pytest.approx(90.2) and t.spent_minutes == 5.0
    assert t.text() == "not reached (best 90.20% after 5.0 CPU-min)"


def test_a_curve_still_rising_gets_an_estimate_from_the_slope_of_its_last_points():
    # Early points off the line do not move the estimate: only the last five are fitted.
    curve = [point(10, 0.2, 0.25), *log_linear([1.0, 1.5, 2.0, 3.0, 4.0])]
    t = time_to_accuracy(curve, 70.0)
    assert not t.reached
    assert t.estimate == pytest.approx(math.exp(2.0), rel=1e-6)  # 0.5 + 0.1 ln t = 0.7
    assert t.text().endswith(f"still rising, estimate ~{math.exp(2.0):.1f} CPU-min")
    # A rise within the noise of one validation figure is no trend.
    assert time_to_accuracy(log_linear([1.0, 2.0, 4.0], ci=0.2), 70.0).estimate is None
    # Nor are fewer points than the fit needs.
    assert time_to_accuracy(log_linear([1.0, 2.0]), 70.0).estimate is None
    # An extrapolation far past the time spent is a bound, not a figure.
    slow = [point(100, 0.90, 1.0, 0.001), point(200, 0.905, 2.0, 0.001), point(300, 0.91, 4.0, 0.001)]
    far = time_to_accuracy(slow, 99.0)
    assert math.isinf(far.estimate) and "estimate over 100x the time spent" in far.text()


def test_a_flat_curve_whose_last_points_start_at_a_low_figure_gets_no_estimate():
    # Flat at 98% within its CIs (0.3 points), with one low figure starting the last five points:
    # those five alone rise beyond their noise, the last ten do not.
    accuracies = [0.980, 0.981, 0.980, 0.9805, 0.981, 0.9755, 0.9783, 0.9789, 0.9792, 0.9806]
    curve = [point(500 * (i + 60), a, 360.0 + 8.5 * i, ci=0.003) for i, a in enumerate(accuracies)]
    assert time_to_accuracy(curve[-5:], 99.47).estimate is not None
    t = time_to_accuracy(curve, 99.47)
    assert not t.reached and t.estimate is None
    assert t.text() == f"not reached (best 98.10% after {360.0 + 8.5 * 9:,.0f} CPU-min)"
    # The same ten points climbing steadily through their CIs are a rise.
    climbing = [point(500 * (i + 60), 0.970 + 0.0015 * i, 360.0 + 8.5 * i, ci=0.003) for i in range(10)]
    assert time_to_accuracy(climbing, 99.47).estimate is not None


def test_no_time_to_accuracy_without_cpu_times():
    curve = [point(100, 0.97, 1.0)]
    curve[0]["cpu_seconds"] = None
    assert time_to_accuracy(curve, 95.0) is None
    assert time_to_accuracy([], 95.0) is None


def curves():
    return [
        LearnerCurve("maml", "maml", 5, 1, log_linear([1.0, 2.0, 4.0])),
        LearnerCurve("protonet", "protonet", 5, 1, log_linear([0.5, 1.0, 3.0])),
        LearnerCurve("anil", "anil", 5, 1, log_linear([1.0, 2.0])),  # no paper figure listed
    ]


def test_accuracy_curves_draw_one_line_per_learner_and_its_papers_figure_in_its_colour():
    fig = accuracy_curves_figure(curves())
    panels = fig.axes
    assert [ax.get_xlabel().split()[0] for ax in panels] == ["iteration", "CPU"]
    for ax in panels:
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert [ln.get_label() for ln in lines] == ["maml (paper 98.7)", "protonet (paper 98.8)", "anil"]
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert sorted(ln.get_ydata()[0] for ln in dashed) == [98.7, 98.8]
        for paper, curve in zip(dashed, lines):
            assert paper.get_color() == curve.get_color()
        assert len(ax.collections) == 3  # a CI band per learner
    # CPU minutes on the second panel's x axis.
    assert list(panels[1].get_lines()[0].get_xdata()) == [1.0, 2.0, 4.0]


def test_accuracy_curves_leave_points_without_cpu_time_out_of_the_cpu_panel(tmp_path):
    old = LearnerCurve("reptile", "reptile", 5, 1, log_linear([1.0, 2.0]))
    for p in old.points:
        p["cpu_seconds"] = None
    fig = accuracy_curves_figure([old], axes=("cpu",), log_x=True)
    assert [ln.get_label() for ln in fig.axes[0].get_lines() if ln.get_linestyle() != "--"] == []
    out = accuracy_curves(curves(), tmp_path / "c.png", axes=("cpu",), log_x=True)
    with Image.open(out) as im:
        im.verify()
        assert im.format == "PNG"


def test_time_to_accuracy_figure_is_written(tmp_path):
    rising = log_linear([1.0, 2.0, 4.0])
    rows = [
        ("maml", {"95%": time_to_accuracy(rising, 55.0), "paper": time_to_accuracy(rising, 70.0)}),
        ("protonet", {"95%": time_to_accuracy(rising, 99.0), "paper": None}),
    ]
    out = time_to_accuracy_figure(rows, tmp_path / "t.png")
    with Image.open(out) as im:
        im.verify()
        assert im.format == "PNG"


def run_folder(path: Path, algorithm: str, accuracies: list[float], **config) -> Path:
    path.mkdir(parents=True)
    values = {"algorithm": algorithm, "benchmark": "omniglot", "ways": 5, "shots": 1, "threads": 1, **config}
    (path / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    lines = []
    for i, acc in enumerate(accuracies, 1):
        lines.append(
            {"iteration": 100 * i - 50, "loss": 1.0 / i, "seconds": 50.0 * i, "cpu_seconds": 40.0 * i}
        )
        lines.append(
            {"iteration": 100 * i, "loss": 1.0 / i, "val_accuracy": acc, "val_ci95": 0.01}
            | {"seconds": 100.0 * i, "cpu_seconds": 80.0 * i}
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return path


def test_report_draws_the_accuracy_curves_of_run_folders_and_results_files(tmp_path, capsys):
    maml = run_folder(tmp_path / "maml", "maml", [0.6, 0.8, 0.9])
    cell = tmp_path / "protonet_5w1s.json"
    record = {"algorithm": "protonet", "ways": 5, "shots": 1, "accuracy": 97.5, "ci95": 0.2}
    record |= {"iterations": 300, "train_seconds": 300, "curve": log_linear([1.0, 2.0, 4.0])}
    cell.write_text(json.dumps(record))
    out = tmp_path / "report"
    assert main(["report", str(maml), str(cell), "--out", str(out)]) == 0
    with Image.open(out / "accuracy_curves.png") as im:
        im.verify()
    md = (out / "report.md").read_text()
    assert "![Validation accuracy against iterations and CPU time](accuracy_curves.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| protonet_5w1s"))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "protonet_5w1s",
        "protonet",
        "5-way 1-shot",
        "300",
        "300",
        "97.50 ± 0.20",
        "98.8",
    ]
    # A results file alone is enough; a file that is neither is one line, exit status 2.
    assert main(["report", str(cell), "--out", str(tmp_path / "only")]) == 0
    assert (tmp_path / "only" / "accuracy_curves.png").exists()
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"algorithm": "maml"}')
    assert main(["report", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metalab: error: ") and "bad.json is neither a run folder nor a results file" in err
    assert len(err.splitlines()) == 1


@pytest.fixture
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("omniglot_bench", ROOT / "benchmarks" / "omniglot.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["omniglot_bench"] = module
    spec.loader.exec_module(module)
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    return module


def bench_main(module, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["omniglot.py", *argv])
    return module.main()


def record_tested(cell, algorithm, **extra):
    return {
        "cell": cell,
        "algorithm": algorithm,
        "ways": 5,
        "shots": 1,
        "accuracy": 90.0,
        "ci95": 0.5,
        "test_episodes": 1000,
        "test_queries": 15,
        "iterations": 200,
        "planned_iterations": 10000,
        "train_seconds": 360,
        "trained_by": cell,
        "threads": 1,
        **extra,
    }


def test_benchmark_curves_refreshes_the_tested_run_and_keeps_a_record_of_another(
    bench, tmp_path, monkeypatch
):
    results = tmp_path / "results"
    results.mkdir()
    # matching: tested on the run that is still going (its stored curve is where the run was).
    run_folder(tmp_path / "out" / "matching_5w1s", "matching", [0.80, 0.90, 0.955, 0.96])
    stored = bench.run_curve(tmp_path / "out" / "matching_5w1s")[:2]
    (results / "matching_5w1s.json").write_text(
        json.dumps(record_tested("matching_5w1s", "matching", curve=stored))
    )
    # relation: a record from before curves, and a new run in its folder.
    run_folder(tmp_path / "out" / "relation_5w1s", "relation", [0.7, 0.8])
    old_relation = record_tested("relation_5w1s", "relation")
    (results / "relation_5w1s.json").write_text(json.dumps(old_relation))

    assert bench_main(bench, ["curves", "--runs", str(tmp_path / "out")], monkeypatch) == 1
    matching = json.loads((results / "matching_5w1s.json").read_text())
    assert [p["iteration"] for p in matching["curve"]] == [100, 200, 300, 400]
    assert matching["accuracy"] == 90.0 and matching["iterations"] == 200  # the tested figure stays
    assert json.loads((results / "relation_5w1s.json").read_text()) == old_relation

    assert bench_main(bench, ["curves", "--runs", str(tmp_path / "out"), "--new-run"], monkeypatch) == 0
    relation = json.loads((results / "relation_5w1s.json").read_text())
    assert "accuracy" not in relation and relation["iterations"] == 200 and len(relation["curve"]) == 2
    assert relation["train_cpu_seconds"] == 160

    # The table: maml has no curve ("-"), matching crossed 95% at its third point (4 CPU-min), relation
    # never did; the plots are written.
    (results / "maml_5w1s.json").write_text(json.dumps(record_tested("maml_5w1s", "maml")))
    assert bench_main(bench, ["table", "--notes", str(tmp_path / "none.md")], monkeypatch) == 0
    md = (tmp_path / "docs" / "results.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in md.split("## Learning curves and time to accuracy")[1].splitlines()
        if line.startswith("| ") and "method" not in line
    }
    assert rows["maml"][2:4] == ["-", "98.7%: -"]
    assert rows["matching"][2] == "4.0 CPU-min (iteration 300)"
    assert rows["matching"][3].startswith("98.1%: not reached (best 96.00% after 5.3 CPU-min)")
    assert rows["matching"][4:6] == ["400 of 10,000", "7 min, 5 CPU-min, 1 thread"]
    assert rows["relation"][2].startswith("not reached (best 80.00% after 2.7 CPU-min)")
    main_rows = [line for line in md.split("## Learning")[0].splitlines() if line.startswith("| relation")]
    assert "not meta-tested yet" in main_rows[0] and "6 min, - CPU-min" not in main_rows[0]
    assert (
        "| maml | 5-way 1-shot | 90.00 ± 0.50 (1000 episodes) |" in md and "6 min, - CPU-min, 1 thread" in md
    )
    for name in ("omniglot_curves.png", "omniglot_time_to_accuracy.png"):
        with Image.open(tmp_path / "docs" / name) as im:
            im.verify()
        assert f"({name})" in md


def test_benchmark_names_a_cells_options_outside_its_paper(bench, tmp_path, monkeypatch):
    """A cell that sets an option its paper lacks (Matching's cosine_scale) is its own row, named
    with that option in both tables, beside the paper's row."""
    paper_cell = load_config(ROOT / "configs" / "omniglot" / "matching_5w1s.yaml").resolved()
    scaled_cell = load_config(ROOT / "configs" / "omniglot" / "matching_5w1s_cosine10.yaml").resolved()
    assert bench._variant(paper_cell) == "" and bench._variant(scaled_cell) == "cosine_scale 10"
    results = tmp_path / "results"
    results.mkdir()
    curve = [{"iteration": 100, "val_accuracy": 96.0, "val_ci95": 1.0, "seconds": 60.0, "cpu_seconds": 60.0}]
    (results / "matching_5w1s.json").write_text(json.dumps(record_tested("matching_5w1s", "matching")))
    scaled = record_tested("matching_5w1s_cosine10", "matching", variant="cosine_scale 10", curve=curve)
    (results / "matching_5w1s_cosine10.json").write_text(json.dumps(scaled))
    assert bench_main(bench, ["table", "--notes", str(tmp_path / "none.md")], monkeypatch) == 0
    md = (tmp_path / "docs" / "results.md").read_text()
    main_table, curves_table = md.split("## Learning curves and time to accuracy")
    assert "| matching | 5-way 1-shot | 90.00 ± 0.50" in main_table
    assert "| matching (cosine_scale 10) | 5-way 1-shot | 90.00 ± 0.50" in main_table
    assert "| matching (cosine_scale 10) | 5-way 1-shot | 1.0 CPU-min (iteration 100) |" in curves_table


def test_the_tables_say_when_a_model_trained_past_its_config_s_budget(bench):
    assert bench._of_planned(8_500, {"planned_iterations": 75_000}) == "8,500 of 75,000"
    assert bench._of_planned(6_250, {"planned_iterations": 6_250}) == "6,250 of 6,250"
    assert bench._of_planned(89_160, {"planned_iterations": 6_250}) == "89,160 (past the config's 6,250)"


def test_benchmark_names_a_cell_on_the_maml_authors_model(bench):
    """A cell on the MAML authors' Omniglot model is named so beside the same learner's row on
    metalab's Conv-4 and split, with its step schedule where runs on that model differ in it."""
    authors = {"algorithm": "fomaml", "cell": "fomaml_5w1s_random_authors_model", "ways": 5, "shots": 1}
    plain = {"algorithm": "fomaml", "cell": "fomaml_5w1s_random", "ways": 5, "shots": 1}
    late = {**authors, "cell": "fomaml_5w1s_random_authors_model_late_decay"}
    assert bench._method(authors) == "fomaml (authors' model, rate /10 every 13,800, random split)"
    assert bench._method(late) == "fomaml (authors' model, rate /10 every 40,000, random split)"
    assert bench._method(plain) == "fomaml (random split)"
    assert bench._learner_order(authors) > bench._learner_order(plain)


def test_every_shipped_sibling_cell_still_trains_the_model_its_row_came_from(bench):
    """A cell meta-tested on another cell's model (its results file's trained_by) has that config's
    training keys (it extends that file and sets only test keys); `train` finds it by that equality,
    so a cell that drifted (a training key set, or the file it extends changed) would silently stop
    being tested with the model its row names."""
    shipped = ROOT / "benchmarks" / "results" / "omniglot"
    siblings = [
        (p.stem, record["trained_by"])
        for p in sorted(shipped.glob("*.json"))
        if (record := json.loads(p.read_text()))["trained_by"] != p.stem
    ]
    assert siblings, f"no results file in {shipped} names another cell's model"
    for cell, trainer in siblings:
        own, theirs = (load_config(bench.CONFIGS / f"{name}.yaml") for name in (cell, trainer))
        assert bench._training_part(own) == bench._training_part(theirs), (
            f"{cell} no longer trains {trainer}'s model"
        )


def test_every_omniglot_figure_the_readme_quotes_is_one_the_results_page_holds():
    """The README's Omniglot section repeats figures from docs/results.md (its tables and notes);
    a figure that changes there and not in the README would leave the front door stale."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Omniglot", 1)[1].split("\n### ", 1)[0]
    quoted = re.findall(r"\d+\.\d+ ± \d+\.\d+", section)
    assert len(quoted) >= 20, "the README's Omniglot section lost its figures"
    results = (ROOT / "docs" / "results.md").read_text()
    stale = [figure for figure in quoted if figure not in results]
    assert not stale, f"README figures not in docs/results.md: {stale}"
