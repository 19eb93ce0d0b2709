"""Run folders, `metalab runs`, sweeps and reports."""

import json

import pytest
from PIL import Image

from metalab.cli import main

TINY = [
    "--iterations",
    "30",
    "--meta-batch",
    "4",
    "--val-every",
    "10",
    "--val-tasks",
    "10",
    "--test-tasks",
    "20",
    "--quiet",
]


def test_sweep_runs_the_grid_and_prints_its_table(tmp_path, capsys):
    cfg = tmp_path / "sine.yaml"
    cfg.write_text("iterations: 15\nmeta_batch: 4\nval_every: 5\nval_tasks: 10\ntest_tasks: 20\n")
    code = main(
        [
            "sweep",
            str(cfg),
            "--set",
            "inner_lr=0.005,0.02",
            "--set",
            "shots=5,10",
            "--runs",
            str(tmp_path / "runs"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")][:3] == ["inner_lr", "shots", "test MSE"]
    assert len(table) == 2 + 4  # header, rule, one row per combination
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 4
    for run in runs:
        result = json.loads((run / "results.json").read_text())
        assert result["test"][0]["metric"] == "mse" and result["iterations"] == 15
    shots = sorted(json.loads((r / "results.json").read_text())["shots"] for r in runs)
    assert shots == [5, 5, 10, 10]
    # `metalab runs` lists them with their figures.
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out, _ = capsys.readouterr()
    assert out.count("maml") == 4 and "15/15" in out and "MSE" in out


def test_sweep_refuses_a_bad_axis_before_running(tmp_path, capsys):
    cfg = tmp_path / "sine.yaml"
    cfg.write_text("iterations: 5\n")
    assert main(["sweep", str(cfg), "--set", "shots=5,-1", "--runs", str(tmp_path / "runs")]) == 2
    assert "'shots' must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_report_writes_valid_images_and_pages(tmp_path, capsys):
    for algorithm in ("maml", "metasgd"):
        assert (
            main(
                [
                    "train",
                    *TINY,
                    "--algorithm",
                    algorithm,
                    "--run-dir",
                    str(tmp_path / algorithm),
                    "--eval-steps",
                    "1",
                    "5",
                ]
            )
            == 0
        )
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "maml"), str(tmp_path / "metasgd"), "--out", str(out)]) == 0
    for name in ("learning_curves.png", "sine_adaptation.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG"
    md = (out / "report.md").read_text()
    assert "![Learning curves](learning_curves.png)" in md and "![Sine-wave adaptation" in md
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("| ") and "algorithm" not in line
    ]
    assert sorted((r[1], r[2]) for r in rows) == [
        ("maml", "K=10, 1 step(s)"),
        ("maml", "K=10, 5 step(s)"),
        ("metasgd", "K=10, 1 step(s)"),
        ("metasgd", "K=10, 5 step(s)"),
    ]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "metasgd" in page
    assert main(["report", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_tensorboard_event_files_when_installed(tmp_path, capsys):
    pytest.importorskip(
        "torch.utils.tensorboard", reason="tensorboard not installed (pip install -e '.[tracking]')"
    )
    assert main(["train", *TINY, "--run-dir", str(tmp_path / "run"), "--no-eval"]) == 0
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"loss", "mse", "val_mse"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val_mse")] == [10, 20, 30]


def test_a_run_folders_config_reads_as_config_files_do(tmp_path):
    """config.yaml in a run folder is read like a config file: `off` is the string, a key given twice
    is refused with the file's name."""
    from metalab.experiment import RunFolderError, read_run_config

    (tmp_path / "config.yaml").write_text("kernels: off\nfirst_order: true\n")
    assert read_run_config(tmp_path) == {"kernels": "off", "first_order": True}
    (tmp_path / "config.yaml").write_text("ways: 5\nways: 20\n")
    with pytest.raises(RunFolderError, match="config.yaml.*'ways' is given twice"):
        read_run_config(tmp_path)
