"""Tasks, the episodic sampler and class splits."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metalab.tasks import EpisodeSampler, SineTasks, Task, TaskBatch, split_classes


def test_task_batch_checks_shapes():
    TaskBatch(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(2, 7, 3), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="support_x and support_y disagree"):
        TaskBatch(torch.zeros(2, 5, 3), torch.zeros(2, 4), torch.zeros(2, 7, 3), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="number of tasks"):
        TaskBatch(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(3, 7, 3), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="same example shape"):
        TaskBatch(torch.zeros(2, 5, 3), torch.zeros(2, 5), torch.zeros(2, 7, 4), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        TaskBatch(torch.zeros(5), torch.zeros(2, 5), torch.zeros(2, 7, 4), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="query_x and query_y disagree"):
        Task(torch.zeros(5, 3), torch.zeros(5), torch.zeros(7, 3), torch.zeros(6))


def test_task_batch_indexing_and_stack():
    batch = SineTasks(shots=4, queries=6, seed=1).sample(3)
    task = batch[1]
    assert isinstance(task, Task) and task.support_x.shape == (4, 1)
    assert torch.equal(TaskBatch.stack([batch[0], batch[1], batch[2]]).query_y, batch.query_y)
    assert batch[0:2].num_tasks == 2


def _data(num_classes, per_class, dims=2):
    # Each example's features encode (class, index) so tests can recover where it came from.
    y = torch.arange(num_classes).repeat_interleave(per_class)
    idx = torch.arange(num_classes * per_class)
    x = torch.stack([y.float(), idx.float()], dim=1)[:, :dims]
    return x, y


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 12),
    per_class=st.integers(2, 9),
    ways=st.integers(1, 12),
    shots=st.integers(1, 4),
    queries=st.integers(0, 4),
    tasks=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_episode_properties(num_classes, per_class, ways, shots, queries, tasks, seed):
    x, y = _data(num_classes, per_class)
    if ways > num_classes or shots + queries > per_class:
        with pytest.raises(ValueError):
            EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, seed=seed)
        return
    sampler = EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, seed=seed)
    batch = sampler.sample(tasks)
    assert batch.support_x.shape == (tasks, ways * shots, 2)
    assert batch.query_x.shape == (tasks, ways * queries, 2)
    for t in range(tasks):
        # Labels are 0..N-1, K (resp. Q) of each.
        assert torch.equal(torch.bincount(batch.support_y[t], minlength=ways), torch.full((ways,), shots))
        if queries:
            assert torch.equal(torch.bincount(batch.query_y[t], minlength=ways), torch.full((ways,), queries))
        # Every relabelled class maps to one true class; different labels to different classes.
        true_support = batch.support_x[t, :, 0].long()
        mapping = {}
        for label, cls in zip(batch.support_y[t].tolist(), true_support.tolist()):
            assert mapping.setdefault(label, cls) == cls
        for label, cls in zip(batch.query_y[t].tolist(), batch.query_x[t, :, 0].long().tolist()):
            assert mapping[label] == cls
        assert len(set(mapping.values())) == ways
        # No example is used twice within a task (support and query are disjoint).
        ids = torch.cat([batch.support_x[t, :, 1], batch.query_x[t, :, 1]])
        assert ids.unique().numel() == ids.numel()


def test_same_seed_same_episodes_and_state_roundtrip():
    x, y = _data(10, 6)
    a = EpisodeSampler(x, y, ways=3, shots=2, queries=2, seed=7)
    b = EpisodeSampler(x, y, ways=3, shots=2, queries=2, seed=7)
    c = EpisodeSampler(x, y, ways=3, shots=2, queries=2, seed=8)
    first, again = a.sample(4), b.sample(4)
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.query_x, again.query_x)
    assert not torch.equal(first.support_x, c.sample(4).support_x)
    state = a.get_state()
    nxt = a.sample(2)
    a.set_state(state)
    assert torch.equal(a.sample(2).support_x, nxt.support_x)


def test_sampler_draws_only_its_classes_and_uneven_counts():
    y = torch.tensor([0] * 3 + [1] * 8 + [2] * 5 + [3] * 4)
    x = torch.stack([y.float(), torch.arange(len(y)).float()], 1)
    sampler = EpisodeSampler(x, y, classes=[1, 2, 3], ways=2, shots=2, queries=1, seed=0)
    seen = sampler.sample(200).support_x[..., 0].unique().long().tolist()
    assert seen == [1, 2, 3]


def test_sampler_errors_name_the_problem():
    x, y = _data(4, 5)
    with pytest.raises(ValueError, match="cannot draw 5-way episodes from only 4 classes"):
        EpisodeSampler(x, y, ways=5, shots=1, queries=1)
    y2 = y.clone()
    y2[-2:] = 0  # class 3 now has 3 examples
    with pytest.raises(
        ValueError, match=r"character_d has 3 examples, fewer than shots \+ queries = 2 \+ 2 = 4"
    ):
        EpisodeSampler(x, y2, ways=2, shots=2, queries=2, class_names=["a", "b", "c", "character_d"])
    with pytest.raises(ValueError, match="shots must be an integer >= 1"):
        EpisodeSampler(x, y, ways=2, shots=-1, queries=1)
    with pytest.raises(ValueError, match="matching x's first dimension"):
        EpisodeSampler(x[:-1], y, ways=2, shots=1, queries=1)


@given(classes=st.integers(3, 200), val=st.integers(0, 50), test=st.integers(0, 50), seed=st.integers(0, 100))
def test_splits_are_disjoint_and_cover(classes, val, test, seed):
    if val + test >= classes:
        with pytest.raises(ValueError):
            split_classes(classes, val, test, seed)
        return
    s = split_classes(classes, val, test, seed)
    assert (len(s.val), len(s.test)) == (val, test)
    everything = torch.cat([s.train, s.val, s.test])
    assert torch.equal(everything.sort().values, torch.arange(classes))
    assert torch.equal(split_classes(classes, val, test, seed).test, s.test)


def test_sine_tasks_follow_the_paper():
    batch = SineTasks(shots=5, queries=50, seed=0).sample(2000)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    amplitude = y.abs().amax(1).squeeze(-1)
    assert amplitude.max() <= 5.0 + 1e-6 and amplitude.min() >= 0.0
    assert amplitude.mean() > 2.0  # A ~ U[0.1, 5]: mean 2.55, and 55 points nearly reach the peak
    with pytest.raises(ValueError, match="shots"):
        SineTasks(shots=0)
