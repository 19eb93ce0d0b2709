"""The command line: a working train -> eval -> plot path, and one clear line for bad input."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import run

TINY = [
    "--iterations",
    "20",
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


def test_train_eval_plot(tmp_path, capsys):
    code, out, err = run(
        capsys, "train", *TINY, "--run-dir", str(tmp_path / "maml"), "--eval-steps", "1", "5"
    )
    assert code == 0, err
    assert "test mse after 1 step:" in out and "test mse after 5 steps:" in out and "95% CI, 20 tasks" in out
    code, out, err = run(
        capsys, "train", *TINY, "--algorithm", "pretrain", "--run-dir", str(tmp_path / "pre"), "--no-eval"
    )
    assert code == 0, err
    code, out, err = run(
        capsys,
        "eval",
        str(tmp_path / "maml" / "checkpoint.pt"),
        "--tasks",
        "15",
        "--steps",
        "0",
        "3",
        "--shots",
        "5",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert code == 0, err
    assert "K=5" in out and "after 0 steps" in out and "after 3 steps" in out and "15 tasks" in out
    assert (tmp_path / "r.json").exists()
    png = tmp_path / "fig.png"
    code, out, err = run(
        capsys,
        "plot",
        str(tmp_path / "maml" / "checkpoint.pt"),
        "--baseline",
        str(tmp_path / "pre" / "checkpoint.pt"),
        "--out",
        str(png),
    )
    assert code == 0, err
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_resume_and_config_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: fomaml\niterations: 10\nmeta_batch: 3\nval_every: 0\ncheckpoint_every: 5\n")
    assert (
        run(capsys, "train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), "--quiet", "--no-eval")[
            0
        ]
        == 0
    )
    code, out, err = run(
        capsys,
        "train",
        "--run-dir",
        str(tmp_path / "r"),
        "--resume",
        "--iterations",
        "12",
        "--quiet",
        "--no-eval",
        "--config",
        str(cfg),
    )
    assert code == 0, err
    assert "resuming" in out and "for 12 iterations" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["train", "--algorithm", "mamI"],
            "config key 'algorithm' must be one of anil, fomaml, lstm_meta, maml,",
        ),
        (["train", "--shots", "-3"], "config key 'shots' must be >= 1, got -3"),
        (["train", "--shots", "two"], "config key 'shots' must be an integer, got 'two'"),
        (
            ["train", "--set", "inner_lrr=0.1"],
            "unknown config key 'inner_lrr' (did you mean 'inner_lr'?); generic keys: benchmark,",
        ),
        (["train", "--benchmark", "omniglot"], "needs data_dir"),
        (["eval", "missing.pt"], "checkpoint not found: missing.pt"),
        (["train", "--resume"], "--resume needs --run-dir"),
    ],
)
def test_bad_input_gives_one_clear_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_key_in_config_file_and_corrupt_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: maml\nmeta_bach: 4\n")
    code, _, err = run(capsys, "train", "--config", str(cfg))
    assert code == 2 and "unknown config key 'meta_bach' (did you mean 'meta_batch'?)" in err
    cfg.write_text("shots: 5\nshots: 6\n")
    code, _, err = run(capsys, "train", "--config", str(cfg))
    assert code == 2 and "'shots' is given twice" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "eval", str(bad))
    assert code == 2 and "corrupt or truncated" in err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "metalab.cli", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--inner-lr" in out and "--resume" in out and "metalab train" in out


def test_train_help_describes_every_key_with_its_allowed_values():
    """Every config key, generic or an algorithm's own, is a flag of `metalab train` with a
    description and its allowed values, grouped by what it configures."""
    from metalab.algorithms.spec import option_keys
    from metalab.cli import config_flags, parser
    from metalab.config import FIELDS

    groups = config_flags()
    titles = [title for title, _, _ in groups]
    assert titles[:5] == [
        f"config keys: {t}" for t in ("the tasks", "the data", "the model", "meta-training", "evaluation")
    ]
    rows = {name: help_text for _, _, group in groups for name, help_text, _, _ in group}
    assert set(rows) == set(FIELDS) | set(option_keys())
    for name, help_text in rows.items():
        description, _, bracket = help_text.partition(" [")
        allowed = bracket.split("default:")[0].strip("; ")
        assert len(description) > 10 and allowed, (name, help_text)
    # the registered names are the allowed values of `algorithm`
    assert "anil | fomaml | lstm_meta | maml" in rows["algorithm"]
    assert "lstm_meta: the input gate's initial value" in rows["inner_lr"]  # one meaning per algorithm
    assert "maml" in rows["inner_lr"] and "true | false" in rows["fce"]
    text = parser().format_help()
    assert "train" in text


def test_saved_config_reproduces_the_run(tmp_path, capsys):
    assert (
        run(capsys, "train", *TINY, "--inner-lr", "0.02", "--run-dir", str(tmp_path / "a"), "--no-eval")[0]
        == 0
    )
    assert (
        run(
            capsys,
            "train",
            "--config",
            str(tmp_path / "a" / "config.yaml"),
            "--run-dir",
            str(tmp_path / "b"),
            "--quiet",
            "--no-eval",
        )[0]
        == 0
    )
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["learner"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["learner"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        (
            "benchmark: omniglot\ndata_dir: x\nshots: 5\nqueries: 16\n",
            "'shots' + 'queries' = 21 exceed the 20 examples",
        ),
        (
            "benchmark: omniglot\ndata_dir: x\nsplit: lake\nalgorithm: protonet\nways: 5\ntest_ways: 200\n",
            "'test_ways' (200) exceeds the 172 classes of the lake split's meta-val set",
        ),
        ("iterations: 1.5\n", "'iterations' must be an integer, got 1.5"),
        ("first_order: maybe\n", "'first_order' must be true or false"),
        (
            "algorithm: maml\nbenchmark: omniglot\ndata_dir: x\nways: 5\ntest_ways: 20\n",
            "'test_ways' (20) must equal 'ways' (5) for maml",
        ),
    ],
)
def test_impossible_configs_are_refused_at_load(tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    code, _, err = run(capsys, "train", "--config", str(cfg))
    assert code == 2 and message in err, err
