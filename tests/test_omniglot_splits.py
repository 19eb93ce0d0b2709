"""The split sizes the data package states (`SPLIT_CLASSES`, `EXAMPLES_PER_CLASS`) against the real data."""

from __future__ import annotations

import pytest
import torch

from metalab.data import load_omniglot
from metalab.data.omniglot import EXAMPLES_PER_CLASS, SPLIT_CLASSES


@pytest.mark.data
@pytest.mark.parametrize("split", sorted(SPLIT_CLASSES))
def test_real_splits_have_the_stated_sizes(split, omniglot, omniglot_dir, omniglot_cache) -> None:
    data = omniglot if split == "vinyals" else load_omniglot(omniglot_dir, split, cache_dir=omniglot_cache)
    sizes = {part: ids.numel() for part, ids in zip(data.splits._fields, data.splits)}
    assert sizes == SPLIT_CLASSES[split]
    assert data.num_classes == sum(SPLIT_CLASSES[split].values())
    assert torch.bincount(data.y, minlength=data.num_classes).eq(EXAMPLES_PER_CLASS).all()
