r"""Benchmark: one conv layer's forward, data gradient and weight gradient.

  ./launch.sh experiments/bench_conv.py [--rounds 15] [--threads 0]

Times XLA's convolution, jtl.ops.conv (oneDNN through the XLA FFI) and PyTorch
eager (channels-last, oneDNN inside) on the same shapes, interleaved round by
round in one process so that a busy machine slows every variant alike; prints
medians in ms and the ratios XLA / oneDNN and torch / oneDNN.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from jtl import ops

os.environ["JTL_ONEDNN"] = "1"   # oneDNN is opt-in; this benchmark is about it.

# (batch, size, in, out, kernel, stride)
LAYERS = [(32, 56, 64, 64, 3, 1), (32, 14, 256, 256, 3, 1)]
DN = ("NHWC", "HWIO", "NHWC")


def jax_fns(conv, stride, pad):
  """Jitted fwd, dgrad, wgrad of `conv`; XLA drops what each one does not need."""
  f = lambda x, w: conv(x, w, (stride, stride), ((pad, pad), (pad, pad)))
  fwd = jax.jit(f)
  dgrad = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy)[0])
  wgrad = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy)[1])
  return fwd, dgrad, wgrad


def torch_fns(stride, pad):
  args = (None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1)
  bwd = torch.ops.aten.convolution_backward
  fwd = lambda x, w, dy: torch.conv2d(x, w, None, stride, pad)
  dgrad = lambda x, w, dy: bwd(dy, x, w, *args, [True, False, False])[0]
  wgrad = lambda x, w, dy: bwd(dy, x, w, *args, [False, True, False])[1]
  return fwd, dgrad, wgrad


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  args = parser.parse_args(argv)
  assert ops.available(), "the oneDNN library did not build"
  xla_conv = lambda x, w, s, p: lax.conv_general_dilated(x, w, s, p, dimension_numbers=DN)
  rng = np.random.default_rng(0)
  for n, size, cin, cout, k, stride in LAYERS:
    pad = k // 2
    out = (size + 2 * pad - k) // stride + 1
    x = rng.standard_normal((n, size, size, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.05
    dy = rng.standard_normal((n, out, out, cout), np.float32)
    jx, jw, jdy = map(jnp.asarray, (x, w, dy))
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory = channels-last NCHW
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
    variants = {"xla": jax_fns(xla_conv, stride, pad), "onednn": jax_fns(ops.conv, stride, pad)}
    times = {(v, p): [] for v in [*variants, "torch"] for p in range(3)}
    with torch.no_grad():
      for r in range(args.rounds + 1):  # round 0 compiles and warms up
        for p in range(3):
          for name, fns in variants.items():
            t = time.perf_counter()
            jax.block_until_ready(fns[p](jx, jw, jdy) if p else fns[p](jx, jw))
            times[name, p].append(time.perf_counter() - t)
          t = time.perf_counter()
          torch_fns(stride, pad)[p](tx, tw, tdy)
          times["torch", p].append(time.perf_counter() - t)
    med = {key: 1e3 * statistics.median(ts[1:]) for key, ts in times.items()}
    print(f"\nconv {k}x{k}/{stride} batch {n}, {size}x{size}, {cin}->{cout}  (median ms of {args.rounds})")
    print(f"{'':8}{'xla':>9}{'onednn':>9}{'torch':>9}{'xla/onednn':>12}{'torch/onednn':>14}")
    for p, part in enumerate(("fwd", "dgrad", "wgrad")):
      a, b, c = med["xla", p], med["onednn", p], med["torch", p]
      print(f"{part:8}{a:9.1f}{b:9.1f}{c:9.1f}{a / b:12.2f}{c / b:14.2f}")


if __name__ == "__main__":
  main()
