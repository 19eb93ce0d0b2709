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


OMNIGLOT_CONFIGS = [p for p in CONFIGS if p.parent.name == "omniglot"]


@pytest.mark.parametrize("path", OMNIGLOT_CONFIGS, ids=[p.stem for p in OMNIGLOT_CONFIGS])
def test_omniglot_config_header_states_the_figure_the_tables_use(path):
    """The figure a config's header quotes for its cell is the one `papers.paper_figure` puts beside
    the results (and a config whose paper reports none says so)."""
    import re

    from metalab.papers import paper_figure

    c = load_config(path).resolved()
    if c.algorithm == "mann":  # reported by instance, not per cell (papers.MANN_BY_INSTANCE)
        return
    header = "\n".join(line for line in path.read_text().splitlines()[:8] if line.startswith("#"))
    figure = paper_figure(
        c.algorithm,
        c.test_ways or c.ways,
        c.test_shots or c.shots,
        transductive=getattr(c.options, "transductive", True),
    )
    if figure is None:
        assert re.search(r"reports? (no|only)|no .*figure|none is quoted", header), (
            f"{path.name}: no paper figure, header:\n{header}"
        )
    else:
        quoted = [float(x) for x in re.findall(r"\b\d{2}\.\d+\b", header)]
        assert figure in quoted, f"{path.name}: papers.py says {figure}, the header quotes {quoted}"
