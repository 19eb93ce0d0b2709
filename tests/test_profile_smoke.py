"""benchmarks/learner_profile.py's smoke run on real Omniglot: every phase timed, the FLOP count and its
predicted time filled in, and a fix's old and new code giving the same loss."""

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _profile(omniglot_dir, tmp_path, monkeypatch, *args):
    """The benchmark's main() in this process (no interpreter start or torch import per call)."""
    monkeypatch.setenv("METALAB_OMNIGLOT", str(omniglot_dir))
    spec = importlib.util.spec_from_file_location(
        "learner_profile", ROOT / "benchmarks" / "learner_profile.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "profile.json"
    threads = torch.get_num_threads()
    try:
        assert module.main(["--smoke", "--out", str(out), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_profile_smoke_times_every_phase(omniglot_dir, tmp_path, monkeypatch):
    record = _profile(omniglot_dir, tmp_path, monkeypatch, "--learners", "fomaml", "matching")
    maml, matching = record["learners"]["fomaml"], record["learners"]["matching"]
    for r in (maml, matching):
        assert r["train_flops"] > 0 and r["predicted_s"] > 0
        assert r["cpu_seconds"]["backward"] > 0 and r["cpu_seconds"]["validation"] > 0
        assert r["checkpoint"]["bytes"] > 0 and r["validation"]["per_task_s"] > 0
    assert maml["inner_split"] and maml["cpu_seconds"]["inner"] > 0  # the inner steps were hooked
    assert not matching["inner_split"] and matching["cpu_seconds"]["inner"] == 0


def test_profile_fixes_compare_old_and_new_code(omniglot_dir, tmp_path, monkeypatch):
    fix = _profile(omniglot_dir, tmp_path, monkeypatch, "--fixes", "1")["fixes"]["lstm_meta"]
    assert fix["old"]["train"] > 0 and fix["new"]["train"] > 0
    old, new = fix["loss_first_batch"]["old"], fix["loss_first_batch"]["new"]
    assert abs(old - new) <= 1e-5 * abs(old)
