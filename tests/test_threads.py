"""The choice of torch's intra-op threads (metalab.threads): one for small models and per task-thread
worker, else the free cores, followed during a run; and what a run and its meta-test do with it."""

import pytest
import torch

from metalab import MAML, ProtoNet
from metalab import threads as threads_module
from metalab.config import config_from_dict
from metalab.experiment import meta_test
from metalab.models import MLP, Conv4
from metalab.threads import (
    SMALL_PARAMETERS,
    ThreadGovernor,
    background_load,
    choose_threads,
    free_threads,
    is_small_model,
    load_reading,
    threads_for,
)
from metalab.train import train


def test_an_explicit_count_wins_and_task_threads_or_a_small_model_get_one():
    common = dict(cores=2, busy=0.0)
    assert choose_threads(explicit=3, small=True, workers=2, **common) == 3
    assert choose_threads(explicit=None, small=False, workers=2, **common) == 1  # not stacked on workers
    assert choose_threads(explicit=None, small=True, workers=1, **common) == 1
    assert choose_threads(explicit=None, small=False, workers=1, **common) == 2


@pytest.mark.parametrize(
    "cores, world, busy, expected",
    [
        (2, 1, 0.0, 2),
        (2, 1, 0.2, 2),
        (2, 1, 0.45, 2),  # busy less than half the time: still free
        (2, 1, 0.6, 1),
        (2, 1, 1.0, 1),
        (2, 1, 4.0, 1),  # never fewer than one
        (8, 1, 3.0, 5),
        (8, 1, 2.4, 6),
        (8, 2, 0.0, 4),  # torchrun: the cores shared among the processes
        (8, 2, 6.0, 2),
        (2, 1, None, 2),  # load unknown: the cores
    ],
)
def test_the_free_cores_are_used(cores, world, busy, expected):
    got = choose_threads(explicit=None, small=False, workers=1, cores=cores, world=world, busy=busy)
    assert got == expected
    assert free_threads(cores, max(1, cores // world), busy) == expected


def test_small_means_no_convolution_and_few_parameters():
    assert is_small_model(MAML(MLP(), "regression"))  # the sine MLP: 1,761 parameters
    assert is_small_model(MLP(hidden=(100, 100)))  # 10,401
    assert not is_small_model(MLP(hidden=(128, 128)))  # 16,897
    assert sum(p.numel() for p in MLP(hidden=(300, 300)).parameters()) > SMALL_PARAMETERS
    assert not is_small_model(MLP(hidden=(300, 300)))
    assert not is_small_model(Conv4(1, 8, 5))  # few parameters, but convolutions on images


def test_the_governor_changes_only_when_two_windows_in_a_row_agree():
    now, set_to, load = [0.0], [], [0.0]
    gov = ThreadGovernor(
        2, 2, every=2.0, gap=0.5, read=lambda: load[0], clock=lambda: now[0], set_threads=set_to.append
    )
    assert gov.threads == 2 and set_to == [2]  # the start: a burst of readings of no load

    def run_until(t, value):
        load[0] = value
        while now[0] < t:
            now[0] += 0.25
            gov.follow()
        return gov.threads

    assert run_until(4.0, 0.0) == 2
    assert run_until(6.0, 1.0) == 2  # one busy window is not enough
    assert run_until(8.0, 0.0) == 2
    assert run_until(12.0, 1.0) == 1  # two in a row are
    assert run_until(14.0, 0.0) == 1
    assert run_until(16.0, 0.3) == 2  # busy less than half the time: free
    assert set_to == [2, 1, 2] and gov.changes == 2


def test_the_governor_reads_at_most_every_gap_seconds():
    now, reads = [0.0], []
    gov = ThreadGovernor(2, 2, every=2.0, gap=0.5, read=lambda: reads.append(1) or 0.0, clock=lambda: now[0])
    started = len(reads)  # the starting burst
    for _ in range(64):  # 64 iterations in one second
        now[0] += 1 / 64
        gov.follow()
    assert len(reads) - started == 2


def test_background_load_counts_other_processes_scaled_to_this_process_cores(monkeypatch):
    monkeypatch.setattr(threads_module, "runnable_threads", lambda: 7)
    monkeypatch.setattr(threads_module, "_own_runnable_threads", lambda: 3)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 8)
    assert load_reading() == pytest.approx(4 * 2 / 8)
    assert background_load(samples=3, gap=0) == pytest.approx(4 * 2 / 8)
    monkeypatch.setattr(threads_module, "runnable_threads", lambda: None)
    assert background_load(samples=3, gap=0) is None


def test_background_load_reads_this_machine():
    busy = background_load(samples=2, gap=0)
    assert busy is None or busy >= 0.0


def sine(**kw):
    return config_from_dict(
        {"iterations": 3, "meta_batch": 4, "val_every": 0, "checkpoint_every": 0, "test_tasks": 5, **kw}
    )


def threads_during(config, tmp_path):
    seen = []
    result = train(
        config, tmp_path, progress=False, on_step=lambda n, _: seen.append(torch.get_num_threads())
    )
    return result, seen


def test_a_sine_run_trains_on_one_thread_and_gives_back_the_setting(tmp_path):
    torch.set_num_threads(2)
    result, seen = threads_during(sine(), tmp_path / "default")
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 2
    _, seen = threads_during(sine(threads=2), tmp_path / "two")  # an explicit count is kept
    assert seen == [2, 2, 2]
    assert torch.get_num_threads() == 2
    seen_in_test = []

    def evaluate(*args, **kw):
        seen_in_test.append(torch.get_num_threads())
        return real_evaluate(*args, **kw)

    import metalab.evaluate

    real_evaluate = metalab.evaluate.evaluate
    with pytest.MonkeyPatch.context() as m:
        m.setattr(metalab.evaluate, "evaluate", evaluate)
        meta_test(result, log=lambda _: None)
    assert seen_in_test and set(seen_in_test) == {1}  # the final meta-test too
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (1.5, 1)])
def test_a_larger_model_follows_the_load(tmp_path, monkeypatch, busy, expected):
    """A model off the small list and off task threads takes the cores that the load leaves free."""
    monkeypatch.setattr(threads_module, "background_load", lambda **_: busy)
    monkeypatch.setattr(threads_module, "load_reading", lambda: busy)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    monkeypatch.setattr("metalab.run.available_cores", lambda: 2)
    torch.set_num_threads(2)
    _, seen = threads_during(sine(hidden=[300, 300]), tmp_path)
    assert seen == [expected] * 3
    assert torch.get_num_threads() == 2


def test_evaluation_takes_the_same_choice_and_restores_the_setting(monkeypatch):
    monkeypatch.setattr(threads_module, "background_load", lambda: 1.0)
    monkeypatch.setattr(threads_module, "available_cores", lambda: 2)
    torch.set_num_threads(2)
    with threads_for(None, MAML(MLP(), "regression")) as n:
        assert n == torch.get_num_threads() == 1
    with threads_for(None, ProtoNet(Conv4(1, 8))) as n:
        assert n == 1  # one core of two busy
    monkeypatch.setattr(threads_module, "background_load", lambda: 0.0)
    with threads_for(None, ProtoNet(Conv4(1, 8))) as n:
        assert n == torch.get_num_threads() == 2
    with threads_for(2, MAML(MLP(), "regression")) as n:
        assert n == 2
    assert torch.get_num_threads() == 2
