"""Hand-written kernels that XLA:CPU lacks: oneDNN convolutions (`conv`, `Conv`) and a max
pool whose gradient XLA fuses (`max_pool`)."""

from jtl.ops.conv import Conv, available, conv
from jtl.ops.pool import max_pool

__all__ = ["Conv", "available", "conv", "max_pool"]
