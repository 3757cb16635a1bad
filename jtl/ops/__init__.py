"""Hand-written kernels that XLA:CPU lacks: oneDNN convolutions (`conv`, `Conv`)."""

from jtl.ops.conv import Conv, available, conv

__all__ = ["Conv", "available", "conv"]
