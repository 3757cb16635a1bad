r"""Benchmark: a linear probe on a cached frozen prefix against recomputing the backbone.

  ./launch.sh experiments/bench_prefix.py                    # 20 epochs of 30000 images
  ./launch.sh experiments/bench_prefix.py --epochs 5 --shots 100

Trains the same linear probe with the trainer, un-augmented (the case
jtl/prefix_cache.py serves): data.cache_prefix=never runs the frozen ResNet every
step; auto computes its activations once; auto again (a sweep's next cell, another
seed say) finds them in the cache. Source: the main study's source shape (small-stem
ResNet-18 of width 0.25, 28 px Fashion-MNIST classes 0-4), trained for --source_steps;
target: classes 5-9, --shots per class (0: all 30000 training images). Reports wall
time end to end (everything train_and_evaluate does, the final test evaluation
included) and of the training loop alone, the speed-ups, and whether the runs reached
the same parameters.
Prints a table and writes WORKDIR/bench_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--shots", type=int, default=0)
  parser.add_argument("--batch", type=int, default=500)
  parser.add_argument("--source_steps", type=int, default=50)
  parser.add_argument("--workdir", default="runs/bench_prefix")
  args = parser.parse_args(argv)

  import numpy as np
  import flax.traverse_util as tu
  from jtl import checkpoint, runtime, train
  from jtl.config import base_config

  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  os.environ["JTL_PREFIX_CACHE"] = tempfile.mkdtemp(prefix="jtl-prefix-")
  runtime.enable_compilation_cache()

  def config(**fields):
    c = base_config()
    c.model.small_stem, c.model.width = True, 0.25
    c.data.image_size, c.data.channels, c.data.augment = 28, 1, False
    c.data.batch_size, c.data.eval_batch_size = args.batch, 500
    c.eval_every, c.progress, c.log_every = 0, False, 10 ** 9
    c.optim.warmup_steps = 0
    for k, v in fields.items():
      parent, _, leaf = k.rpartition(".")
      (c[parent] if parent else c)[leaf] = v
    c.checkpoint_every = c.total_steps
    return c

  source = os.path.join(args.workdir, "source")
  train.train_and_evaluate(config(**{"data.classes": (0, 1, 2, 3, 4),
                                     "total_steps": args.source_steps}), source)
  images = args.shots * 5 or 30000   # Fashion-MNIST has 6000 training images a class.
  steps = args.epochs * images // args.batch
  rows = []
  # "auto" twice: the first cell computes the activations, the second (another seed of a
  # sweep, say) finds them in the cache.
  for mode, name in (("never", "never"), ("auto", "auto"), ("auto", "auto_warm")):
    workdir = os.path.join(args.workdir, name)
    t = time.perf_counter()
    summary = train.train_and_evaluate(config(**{
        "data.classes": (5, 6, 7, 8, 9), "data.shots": args.shots or None, "init": source,
        "strategy.name": "linear_probe", "data.cache_prefix": mode, "optim.lr": 0.1,
        "total_steps": steps}), workdir)
    rows.append({"run": name, "cache_prefix": mode, "end_to_end_s": time.perf_counter() - t,
                 "train_loop_s": summary["train_time_s"],
                 "test_accuracy": summary["test_accuracy"],
                 "cached_through": summary["prefix_cached_through"]})
    print(f"{name:>9}: {rows[-1]['end_to_end_s']:.1f} s end to end, "
          f"{summary['train_time_s']:.1f} s in the training loop", flush=True)
  a, b = (tu.flatten_dict(checkpoint.load_model(os.path.join(args.workdir, m))[0], sep="/")
          for m in ("never", "auto"))
  max_diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
  result = {"epochs": args.epochs, "images": images, "steps": steps, "batch": args.batch,
            "rows": rows, "max_param_difference": max_diff,
            "speedup_end_to_end": rows[0]["end_to_end_s"] / rows[1]["end_to_end_s"],
            "speedup_end_to_end_warm": rows[0]["end_to_end_s"] / rows[2]["end_to_end_s"],
            "speedup_train_loop": rows[0]["train_loop_s"] / rows[1]["train_loop_s"]}
  print(f"\nlinear probe, {args.epochs} epochs of {images} images ({steps} steps of "
        f"{args.batch}), small-stem ResNet-18 x0.25 at 28 px")
  print("| prefix | end to end (s) | training loop (s) | test accuracy |")
  print("|---|---|---|---|")
  for r in rows:
    label = {"never": "recomputed every step", "auto": "cached (computed in this run)",
             "auto_warm": "cached (found in the cache)"}[r["run"]]
    print(f"| {label} | "
          f"{r['end_to_end_s']:.1f} | {r['train_loop_s']:.1f} | {r['test_accuracy']:.4f} |")
  print(f"speed-up: {result['speedup_end_to_end']:.1f}x end to end "
        f"({result['speedup_end_to_end_warm']:.1f}x with the activations already cached), "
        f"{result['speedup_train_loop']:.1f}x in the training loop; largest parameter "
        f"difference {max_diff:.2e}")
  with open(os.path.join(args.workdir, "bench_prefix.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
