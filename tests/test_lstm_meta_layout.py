"""The LSTM meta-learner's update computed with the coordinates on the last axis gives what
`nn.LSTMCell` over one row per coordinate gives: the same theta_T, meta-loss and meta-gradient."""

import importlib.util
from pathlib import Path

import pytest
import torch

from helpers import episode_batch
from metalab.algorithms.optimization.lstm_meta import LSTMMetaLearner
from metalab.models import Conv4

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        "learner_profile", ROOT / "benchmarks" / "learner_profile.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The update on `nn.LSTMCell` itself, one row of input [gradient, loss] per coordinate: the code before
# the layout change, kept in the profile benchmark for its old/new timing.
CellLayout = _benchmark_module().LSTMCellLayout


def _pair(dtype):
    torch.manual_seed(0)
    new = LSTMMetaLearner(Conv4(hidden=4, out_features=5, norm="batch_stats"), inner_steps=3, inner_lr=0.1)
    with torch.no_grad():  # gates that depend on h, theta and the previous gate, not only on the biases
        for gate in (new.input_gate, new.forget_gate):
            gate.weight.normal_(0, 0.3)
    old = CellLayout(Conv4(hidden=4, out_features=5, norm="batch_stats"), inner_steps=3, inner_lr=0.1)
    old.load_state_dict(new.state_dict())
    return new.to(dtype), old.to(dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_last_axis_layout_matches_the_lstm_cell(dtype, tolerance):
    new, old = _pair(dtype)
    batch = episode_batch(ways=5, shots=1, queries=2, tasks=2)
    batch = type(batch)(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y)
    theta_new = new.adapt(batch.support_x, batch.support_y, 3)
    theta_old = old.adapt(batch.support_x, batch.support_y, 3)
    assert (theta_new - theta_old).abs().max() <= tolerance * theta_old.abs().max()
    assert (theta_new - new.initial_parameters()).abs().max() > 1e3 * tolerance  # the updates did move it
    loss_new, _ = new.meta_loss(batch)
    loss_old, _ = old.meta_loss(batch)
    assert loss_new.item() == pytest.approx(loss_old.item(), rel=tolerance)
    grads_new = torch.autograd.grad(loss_new, list(new.parameters()))
    grads_old = torch.autograd.grad(loss_old, list(old.parameters()))
    # Relative to the largest entry: the conv biases before a batch norm have a true gradient of 0.
    scale = max(g.abs().max() for g in grads_old)
    for (name, _), a, b in zip(new.named_parameters(), grads_new, grads_old):
        assert (a - b).abs().max() <= tolerance * scale, name
    out_new = new.predict(batch.support_x, batch.support_y, batch.query_x)
    out_old = old.predict(batch.support_x, batch.support_y, batch.query_x)
    assert (out_new - out_old).abs().max() <= tolerance * out_old.abs().max()
