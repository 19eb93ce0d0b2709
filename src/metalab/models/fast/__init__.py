"""Conv-4's fast path: the second-order hint and the compiled kernels' loader."""
from .hints import expects_second_order, second_order_forward

__all__ = ["second_order_forward", "expects_second_order"]
