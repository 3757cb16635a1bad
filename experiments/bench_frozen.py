r"""Benchmark: frozen parameters cost no backward pass and no optimizer state.

  ./launch.sh experiments/bench_frozen.py                         # ResNet-18, 224 px, batch 32
  ./launch.sh experiments/bench_frozen.py --model resnet50 --batch 16 --size 160

The `frozen` part of experiments/bench.py on its own: times one jit-compiled `train_step`
per strategy against an inference forward pass of the same batch, in alternating rounds,
and reports optimizer-state bytes per label. Targets from the strategy issue: linear_probe
step <= 1.15x the forward pass; partial:3 (last stage + head) step <= 0.40x the full
fine-tune step. Prints a table and writes WORKDIR/bench_frozen.json.
"""

from __future__ import annotations

import argparse
import json
import os

import bench  # experiments/bench.py, beside this file.


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--workdir", default="runs/bench")
  args = parser.parse_args(argv)
  shape = bench.Shape(args.model, args.size, args.batch)
  result = bench.frozen(shape, bench.Jtl(shape), args.repeats)
  bench.print_frozen(result)
  os.makedirs(args.workdir, exist_ok=True)
  out = os.path.join(args.workdir, "bench_frozen.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
