"""The second-order hint: a forward pass says, for its thread, that its gradient will be taken with
`create_graph=True`, so that layers whose fast backward is first order only build their plain
differentiable graph at once. `metalab.functional.inner_gradients` sets it for second-order inner
steps; `FastConv4` reads it."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["second_order_forward", "expects_second_order"]

_hints = threading.local()


@contextmanager
def second_order_forward(enabled: bool = True) -> Iterator[None]:
    """Marks a forward pass whose gradient will be taken with `create_graph=True` (a second-order
    inner step), for this thread. Layers whose fast backward is not itself differentiable (Conv-4's
    fused first block) then build their plain differentiable graph at once, instead of
    recomputing it inside the backward. A hint only: without it the result is the same."""
    previous = getattr(_hints, "second_order", False)
    _hints.second_order = enabled
    try:
        yield
    finally:
        _hints.second_order = previous


def expects_second_order() -> bool:
    """Whether the current forward runs inside `second_order_forward` on this thread."""
    return getattr(_hints, "second_order", False)
