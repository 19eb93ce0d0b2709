"""Configs: flat keys, the algorithm's own keys from its spec, values read as their key's type."""

import pytest

from metalab.algorithms.optimization.maml import MAMLOptions
from metalab.config import Config, ConfigError, config_from_dict, load_config


def test_an_algorithms_keys_live_in_its_options_and_the_saved_form_stays_flat():
    c = Config(algorithm="maml", inner_lr=0.4, inner_steps=3, ways=5).resolved()
    assert isinstance(c.options, MAMLOptions) and c.options.inner_lr == 0.4
    assert c.options.eval_inner_steps == 3 and c.eval_steps == [3]  # defaults from other keys
    flat = c.to_dict()
    keys = list(flat)
    assert keys[keys.index("algorithm") + 1 : keys.index("algorithm") + 7] == [
        "inner_steps", "eval_inner_steps", "strategy", "inner_lr", "first_order", "inner_checkpoint"
    ]  # fmt: skip
    assert config_from_dict(flat).resolved().to_dict() == flat  # a saved config reads back the same


def test_keys_of_another_algorithm_are_dropped_at_their_default_and_refused_otherwise():
    c = config_from_dict({"benchmark": "omniglot", "algorithm": "protonet", "inner_lr": 0.01}).resolved()
    assert "inner_lr" not in c.to_dict() and c.eval_steps == []
    with pytest.raises(ConfigError, match="config key 'inner_lr' applies to .*maml.*, not to protonet"):
        config_from_dict({"benchmark": "omniglot", "algorithm": "protonet", "inner_lr": 0.4}).resolved()
    # a config read back from a run or a checkpoint of an older version holds every key: dropped
    saved = config_from_dict({"benchmark": "omniglot", "algorithm": "protonet", "inner_lr": 0.4}).resolved(
        saved=True
    )
    assert "inner_lr" not in saved.to_dict()
    with pytest.raises(ConfigError, match=r"unknown config key 'fcee' \(did you mean 'fce'\?\)"):
        config_from_dict({"benchmark": "omniglot", "algorithm": "matching", "fcee": True}).resolved()
    with pytest.raises(ConfigError, match="eval_steps' applies to learners with an inner loop"):
        config_from_dict({"benchmark": "omniglot", "algorithm": "protonet", "eval_steps": [1]}).resolved()


def test_numbers_in_exponent_notation_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("outer_lr: 1e-3\ninner_lr: 1e-2\n")
    c = load_config(path)
    assert c.outer_lr == 0.001
    assert Config(**{**c.__dict__, "algorithm": "maml"}).resolved().options.inner_lr == 0.01
    with pytest.raises(ConfigError, match="'outer_lr' must be a number, got 'fast'"):
        config_from_dict({"outer_lr": "fast"})
    assert config_from_dict(
        {"algorithm": "metasgd", "rate_init": ["5e-3", 0.1]}
    ).resolved().options.rate_init == [
        0.005,
        0.1,
    ]


def test_the_algorithms_own_checks_name_the_key():
    with pytest.raises(ConfigError, match="'inner_lr' is the input gate's initial value"):
        Config(algorithm="lstm_meta", inner_lr=2.0).resolved()
    with pytest.raises(ConfigError, match="MAML\\+\\+ needs config key 'inner_steps' >= 1"):
        Config(algorithm="mamlpp", inner_steps=0).resolved()
    with pytest.raises(ConfigError, match="'mann_labels' must be one of onehot, string"):
        Config(benchmark="omniglot", algorithm="mann", mann_labels="words").resolved()
    with pytest.raises(ConfigError, match="'rate_init' must be \\[low, high\\]"):
        Config(algorithm="metasgd", rate_init=[0.2, 0.1]).resolved()


def test_sizes_are_checked_before_anything_is_allocated():
    refusals = {
        "config key 'hidden' must hold widths >= 1": dict(hidden=[40, -3]),
        "this config needs about 149 GiB of memory": dict(hidden=[100_000, 100_000]),
        "needs about .* GiB of memory \\(image_size 100000": dict(benchmark="omniglot", image_size=100_000),
        "'ways' must be >= 2 for classification": dict(benchmark="omniglot", ways=1),
        "'inner_steps' must be <= 10,000": dict(inner_steps=1_000_000),
        "'eval_steps' must hold steps <= 10,000": dict(eval_steps=[1, 100_000_000]),
    }
    from metalab.config_checks import physical_memory

    for message, keys in refusals.items():
        if "GiB" in message and physical_memory() > 2**40:
            continue  # a machine with more than a TiB of memory may run these
        with pytest.raises(ConfigError, match=message):
            Config(**keys).resolved()
    # the papers' largest Omniglot settings pass
    Config(benchmark="omniglot", algorithm="maml", ways=20, shots=5, queries=15, meta_batch=16).resolved()
    Config(benchmark="omniglot", algorithm="protonet", ways=60, shots=5, queries=15, meta_batch=1).resolved()


def test_a_config_file_extends_another_and_changes_only_what_it_names(tmp_path):
    """`extends: OTHER.yaml` (relative to the file) reads the other file first; the file's own keys,
    the algorithm's among them, replace or add to it, through any number of files."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "train.yaml").write_text(
        "algorithm: maml\nways: 5\ninner_lr: 0.4\niterations: 100\n"
    )
    (tmp_path / "base" / "test.yaml").write_text("extends: train.yaml\ninner_lr: 0.1\ntest_queries: 1\n")
    (tmp_path / "more.yaml").write_text("extends: base/test.yaml\nways: 20\n")
    c = load_config(tmp_path / "more.yaml").resolved()
    assert (c.algorithm, c.ways, c.iterations, c.test_queries) == ("maml", 20, 100, 1)
    assert c.options.inner_lr == 0.1
    assert "extends" not in c.to_dict()  # a run folder saves the whole config, not the chain
    assert load_config(tmp_path / "base" / "train.yaml").resolved().options.inner_lr == 0.4


@pytest.mark.parametrize(
    "files, problem",
    [
        (
            {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
            r"which leads back to it \(.*a\.yaml -> ",
        ),
        ({"a.yaml": "extends: a.yaml\n"}, "which leads back to it"),
        (
            {"a.yaml": "extends: gone.yaml\n"},
            r"a\.yaml extends gone\.yaml: config file not found: .*gone\.yaml",
        ),
        ({"a.yaml": "extends: [b.yaml]\n"}, r"extends must name another config file, got \['b\.yaml'\]"),
        (
            {"a.yaml": "extends: b.yaml\n", "b.yaml": "ways: [\n"},
            r"a\.yaml extends b\.yaml: config file .*b\.yaml is not valid YAML",
        ),
    ],
)
def test_a_broken_extends_names_the_file_and_the_problem(tmp_path, files, problem):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_config(tmp_path / "a.yaml")
