"""Every config file shipped in configs/ reads, resolves and passes the checks, and builds its learner
(the data sets themselves are not needed: a learner's shape comes from the config)."""

from pathlib import Path

import pytest

from metalab.builders import build_learner
from metalab.config import load_config
from metalab.config_checks import validate

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_are_found():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_shipped_config_is_valid(path):
    c = load_config(path).resolved()
    validate(c, c.spec())
    if c.benchmark not in ("csv",):
        learner = build_learner(c)
        assert sum(p.numel() for p in learner.parameters()) > 0
