"""benchmarks/matching_scale.py on real Omniglot, a few episodes per arm: every arm trains from the
same weights on the same episodes and records its curve; the diagnosis reads a trained run folder."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metalab.builders import build_learner
from metalab.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("matching_scale", ROOT / "benchmarks" / "matching_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["matching_scale"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.data
def test_arms_differ_only_in_the_attention_and_record_their_curves(bench, omniglot_dir, one_thread, tmp_path):
    out = tmp_path / "scale.json"
    argv = ["--episodes", "4", "--val-every", "2", "--val-tasks", "4", "--data-dir", str(omniglot_dir)]
    assert bench.main([*argv, "--arms", "paper,scale10", "--out", str(out)]) == 0
    assert bench.main([*argv, "--arms", "learned", "--out", str(out)]) == 0  # merged into the file
    results = json.loads(out.read_text())
    assert set(results) == {"paper", "scale10", "learned"}
    for arm in results.values():
        assert [p["episode"] for p in arm["curve"]] == [2, 4]
        assert all(0 <= p["val_accuracy"] <= 100 and p["cpu_seconds"] > 0 for p in arm["curve"])
    paper, scale10, learned = (results[a]["curve"] for a in ("paper", "scale10", "learned"))
    # The same weights and episodes: the unscaled paper formula has a loss >= -log(e / (e + 4)) on
    # every 5-way 1-shot query, a factor of 10 does not.
    assert all(p["train_loss_last100"] >= -math.log(math.e / (math.e + 4)) - 1e-3 for p in paper)
    assert scale10[-1]["train_loss_last100"] < paper[-1]["train_loss_last100"]
    assert learned[-1]["scale"] != 1.0  # the factor is trained
    with pytest.raises(SystemExit):
        bench.main(["--arms", "sharp"])


@pytest.mark.data
def test_diagnose_reports_both_batchnorm_modes_on_a_trained_run(
    bench, omniglot_dir, one_thread, tmp_path, capsys
):
    # A fresh model in a run folder's layout (checkpoint.pt beside config.yaml): the diagnosis
    # needs no training to run.
    c = config_from_dict(
        {"data_dir": str(omniglot_dir)}, load_config(ROOT / "configs" / "omniglot" / "matching_5w1s.yaml")
    ).resolved()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(c.to_dict(), sort_keys=False))
    torch.save({"learner": build_learner(c).state_dict(), "iteration": 0}, tmp_path / "run" / "checkpoint.pt")
    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    argv = ["--diagnose", checkpoint, "--diagnose-episodes", "5", "--data-dir", str(omniglot_dir)]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "P(true) <= 0.405 at 5 ways" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == [
        "train BatchNorm eval    ",
        "train BatchNorm training",
        "val   BatchNorm eval    ",
        "val   BatchNorm training",
    ]
    for line in lines[1:]:
        p_true = float(line.rsplit("P(true) ", 1)[1])
        assert 0 < p_true <= math.e / (math.e + 4) + 1e-6
