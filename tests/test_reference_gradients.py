"""Every learner built from its config with a fixed seed gives the same meta-gradient as the code that
wrote tests/fixtures/meta_gradients.json (float64; see tests/fixtures/make_meta_gradients.py), on the
CPU and on every GPU present (there to a looser tolerance: other kernels sum in other orders)."""

import json
from pathlib import Path

import pytest

from helpers import devices
from reference_cases import CASES, meta_gradient_summary

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "meta_gradients.json").read_text())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", sorted(CASES))
def test_meta_gradient_matches_reference(name, device):
    expected, got = FIXTURE[name], meta_gradient_summary(name, device)
    rel = 1e-9 if device == "cpu" else 1e-7
    assert got["loss"] == pytest.approx(expected["loss"], rel=rel)
    assert sorted(got["params"]) == sorted(expected["params"])
    # Entries whose true value is 0 carry rounding noise: the tolerance scales with the largest norm.
    scale = max(v[1] for v in expected["params"].values())
    for key, want in expected["params"].items():
        for a, b in zip(got["params"][key], want):
            assert abs(a - b) <= rel * abs(b) + 1e-2 * rel * scale, (key, got["params"][key], want)
