"""An algorithm registered from outside the package trains, evaluates and shows its keys through the
CLI, in fresh processes as a user would run it (docs/extending.md walks through the same file)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, classification_csv
from metalab.algorithms import AlgorithmSpec, MetaLearner, NoOptions, Options, get_spec, option, register
from metalab.algorithms.spec import unregister
from metalab.config import Config, ConfigError

PLUGIN = REPO / "examples" / "cosine_protonet.py"


def metalab(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "metalab.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_a_plugin_algorithm_trains_and_evaluates_through_the_cli(tmp_path):
    data = classification_csv(tmp_path / "points.csv", classes=10, per_class=8)
    help_text = metalab("train", "--plugins", PLUGIN, "--help", cwd=tmp_path).stdout
    assert (
        "--temperature TEMPERATURE" in help_text
        and "cosine_protonet: scale of the cosine logits" in help_text
    )
    run_dir = tmp_path / "run"
    trained = metalab(
        "train",
        "--plugins",
        PLUGIN,
        "--algorithm",
        "cosine_protonet",
        "--temperature",
        "5",
        "--benchmark",
        "csv",
        "--data-dir",
        data,
        "--csv-label",
        "label",
        "--hidden",
        "16",
        "8",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "3",
        "--iterations",
        "6",
        "--meta-batch",
        "2",
        "--val-every",
        "3",
        "--val-tasks",
        "4",
        "--test-tasks",
        "10",
        "--run-dir",
        run_dir,
        "--quiet",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert (
        "trained cosine_protonet on csv for 6 iterations" in trained.stdout
        and "test accuracy" in trained.stdout
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["iteration"] == 6 and "val_accuracy" in records[-1]
    saved = (run_dir / "config.yaml").read_text()
    assert "temperature: 5.0" in saved and str(PLUGIN) in saved
    # A fresh process rebuilds it from the checkpoint alone: the config names the plugin.
    evaluated = metalab("eval", run_dir / "checkpoint.pt", "--tasks", "20", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "cosine_protonet on csv, iteration 6" in evaluated.stdout and "test accuracy" in evaluated.stdout
    refused = metalab(
        "train",
        "--plugins",
        PLUGIN,
        "--algorithm",
        "cosine_protonet",
        "--temperature",
        "0",
        "--benchmark",
        "csv",
        "--data-dir",
        data,
        "--csv-label",
        "label",
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "config key 'temperature' must be > 0" in refused.stderr


def test_an_installed_package_registers_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "my_algorithms").mkdir(parents=True)
    (site / "my_algorithms" / "__init__.py").write_text(PLUGIN.read_text())
    info = site / "my_algorithms-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-algorithms\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[metalab.algorithms]\ncosine = my_algorithms\n")
    out = metalab(
        "train",
        "--help",
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])},
    )
    assert out.returncode == 0 and "cosine_protonet (metric)" in out.stdout and "--temperature" in out.stdout


class _Nothing(MetaLearner):
    def meta_loss(self, batch):
        raise NotImplementedError

    def predict(self, support_x, support_y, query_x, *, steps=None):
        raise NotImplementedError


def test_registry_refuses_what_would_be_ambiguous():
    spec = AlgorithmSpec(
        name="maml", family="metric", summary="", learner=_Nothing, build=lambda ctx: _Nothing()
    )
    with pytest.raises(ValueError, match="registered already"):
        register(spec)
    with pytest.raises(ValueError, match="family must be one of"):
        AlgorithmSpec(name="x", family="other", summary="", learner=_Nothing, build=lambda ctx: _Nothing())
    with pytest.raises(TypeError, match="MetaLearner subclass"):
        AlgorithmSpec(name="x", family="metric", summary="", learner=dict, build=lambda ctx: None)

    @dataclasses.dataclass
    class Shadowing(Options):
        ways: int = option(3, "shadows the generic key")

    register(
        AlgorithmSpec(
            name="test_shadowing",
            family="metric",
            summary="",
            learner=_Nothing,
            options=Shadowing,
            build=lambda ctx: _Nothing(),
        )
    )
    try:
        with pytest.raises(ConfigError, match="declares 'ways', a generic config key"):
            Config(benchmark="omniglot", algorithm="test_shadowing").resolved()
    finally:
        unregister("test_shadowing")


def test_every_builtin_option_has_help_and_the_learner_contract_is_declared():
    from metalab.algorithms import specs

    for spec in specs():
        assert spec.summary and spec.learner.training_source in ("episodes", "batches")
        for f in dataclasses.fields(spec.options):
            assert f.metadata["help"], (spec.name, f.name)
    assert get_spec("baseline").learner.training_source == "batches"
    assert get_spec("maml").learner.inner_loop and not get_spec("protonet").learner.inner_loop
    assert get_spec("protonet").options is NoOptions


def test_abstract_contract_is_enforced():
    class Half(MetaLearner):
        def meta_loss(self, batch):
            return None

    with pytest.raises(TypeError, match="predict"):
        Half()
