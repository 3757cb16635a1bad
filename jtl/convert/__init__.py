"""Pretrained checkpoints from other frameworks into jtl, without running their code.

>>> from jtl import convert
>>> params, batch_stats, meta = convert.load("microsoft/resnet-50")   # or .pth, .npz, a workdir
>>> variables, report = convert.load_into(variables, "resnet18.pth", dont_load=("head/.*",))
>>> convert.convert("BiT-M-R50x1.npz", "runs/bit_r50x1")              # a jtl workdir
"""

from jtl.convert.bit import load_bit
from jtl.convert.export import build_model, convert, detect_format, init_head, load, load_into
from jtl.convert.hf import load_hf
from jtl.convert.torchvision import load_torchvision

__all__ = ["build_model", "convert", "detect_format", "init_head", "load", "load_bit",
           "load_hf", "load_into", "load_torchvision"]
