"""Shared fixtures. The real Omniglot copy is looked for in $METALAB_OMNIGLOT, else in
../shared/data/omniglot beside the repository (where CI puts it); tests that need it skip with the
path they looked at when it is absent."""

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
OMNIGLOT_DIR = Path(os.environ.get("METALAB_OMNIGLOT", REPO.parent / "shared" / "data" / "omniglot"))

# Two CPU cores: keep torch from oversubscribing them when tests run beside other work.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _require_omniglot() -> Path:
    if (
        not (OMNIGLOT_DIR / "images_background.zip").exists()
        or not (OMNIGLOT_DIR / "images_evaluation.zip").exists()
    ):
        pytest.skip(f"shared Omniglot not found at {OMNIGLOT_DIR} (set METALAB_OMNIGLOT to its folder)")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    return _require_omniglot()


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot_cache")


@pytest.fixture(scope="session")
def omniglot(omniglot_dir, omniglot_cache):
    """The Vinyals split of the real data (decoded once per test session)."""
    from metalab.data import load_omniglot

    return load_omniglot(omniglot_dir, split="vinyals", cache_dir=omniglot_cache)


@pytest.fixture
def one_thread():
    """One torch thread for a test: learning tests beside other work on 2 cores run faster and
    reproducibly on one thread (tiny ops on two busy threads stall)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """Float64 as the default dtype for one test (exact gradient comparisons); restored after it."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def pytest_terminal_summary(terminalreporter):
    """The bad-input corpus's size by category, and how its cases fared (tests/test_bad_inputs.py)."""
    corpus = sys.modules.get("bad_input_cases")
    if corpus is None:
        return
    outcomes = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid, when = getattr(report, "nodeid", ""), getattr(report, "when", None)
            if when is None or "test_bad_inputs.py::test_bad_input[" not in nodeid:
                continue  # deselected items and other tests
            if when == "call" or report.outcome != "passed":  # a setup error or skip counts too
                outcomes[nodeid.split("[", 1)[1][:-1]] = report.outcome
    terminalreporter.write_line(corpus.summary(outcomes))
