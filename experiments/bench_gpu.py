r"""Benchmark: ResNet-50 training images/s on one GPU, from synthetic data and through jtl's pipeline.

  ./launch.sh experiments/bench_gpu.py                    # on a GPU machine
  ./launch.sh experiments/bench_gpu.py --source fashion_mnist
  ./launch.sh experiments/bench_gpu.py --dry_run          # on CPU: tiny sizes, every code path

Full fine-tuning, the trainer's jit(train.train_step) with the state donated, set up as JAX's
GPU performance tips advise: bfloat16 computation with float32 parameters
(models.get_model(..., dtype=jnp.bfloat16)), NHWC, batch 256, 224x224x3 uint8 images
normalized on the device, XLA_FLAGS with the latency-hiding scheduler (set before jax
starts; --xla_flags adds more). Two measurements:
  synthetic  one random batch already on the device, stepped --steps times;
  pipeline   jtl.data.train_dataset (random crop + flip) over an in-memory ArraySource of
             random 224x224x3 images (--source synthetic) or Fashion-MNIST resized to 224
             (--source fashion_mnist), put on the device two batches ahead of the step.
Prints a table and writes WORKDIR/bench_gpu.json. With no GPU (or --dry_run) it runs a
tiny batch and image size for a few steps: a check of the code, not a GPU number.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

# Set before jax starts its backends; a flag this jaxlib does not know aborts the process.
XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)

ANCHORS = (
    {"what": "NVIDIA DeepLearningExamples ResNet-50 v1.5, PyTorch AMP, batch 256, A100 80GB",
     "img_s": 2470},
    {"what": "MLPerf Training v3.0 ResNet-50, per H100", "img_s": 7000},
)
GOALS = {"synthetic": 5000, "pipeline": 3500}   # img/s on one H100.


def prefetch_to_device(batches, size: int = 2):
  """Yields the batches of `batches` as device arrays, `size` ahead of the consumer, so the
  host-to-device copy of the next batches overlaps the running step."""
  import jax
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.device_put(batch))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


def timed_steps(step, state, batches, rng, warmup: int, steps: int):
  """Seconds for `steps` steps after `warmup` (the first compiles); the loop blocks only at
  the ends, as the trainer's does between log steps. Returns (seconds, state)."""
  import jax
  for _ in range(warmup):
    state, metrics = step(state, next(batches), rng)
  jax.block_until_ready((state, metrics))
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, next(batches), rng)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - t, state


def make_source(name: str, count: int, seed: int = 0):
  import numpy as np
  from jtl import data
  if name == "fashion_mnist":
    return data.load_source("fashion_mnist", "train")
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)
  return data.ArraySource("random", images, rng.integers(0, 1000, count), [str(i) for i in range(1000)])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile)")
  parser.add_argument("--source", default="synthetic", choices=("synthetic", "fashion_mnist"))
  parser.add_argument("--images", type=int, default=4096, help="images in the synthetic source")
  parser.add_argument("--threads", type=int, default=0, help="pipeline threads (0: jtl's default)")
  parser.add_argument("--xla_flags", default="", help="more XLA flags, space-separated")
  parser.add_argument("--dry_run", action="store_true",
                      help="tiny sizes on whatever device there is (automatic without a GPU)")
  parser.add_argument("--workdir", default="runs/bench")
  args = parser.parse_args(argv)

  flags_before_jax = "jax" not in sys.modules
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), *XLA_FLAGS, args.xla_flags]).strip()
  import grain
  import jax
  import jax.numpy as jnp
  import numpy as np
  import bench  # experiments/bench.py, beside this file.
  from jtl import data, models, train

  platform = jax.devices()[0].platform
  dry = args.dry_run or platform != "gpu"
  if dry:   # Every code path, in seconds on a CPU.
    args.batch, args.size, args.steps, args.warmup, args.images = 4, 32, 2, 1, 16
  shape = bench.Shape(args.model, args.size, args.batch)
  machine = bench.machine_info() | {"device_kind": jax.devices()[0].device_kind}
  print(f"{machine['device_kind']} ({platform}), {machine['cpu']}, {machine['cores']} cores, "
        f"jax {machine['jax']}; XLA_FLAGS={os.environ['XLA_FLAGS']}"
        + ("" if flags_before_jax else " (jax was imported before: the flags may not apply)"),
        flush=True)
  if dry:
    print(f"dry run ({'--dry_run' if args.dry_run else 'no GPU'}): batch {args.batch}, "
          f"{args.size} px, {args.steps} steps; these are not GPU numbers.", flush=True)

  model = models.get_model(args.model, num_classes=1000, dtype=jnp.bfloat16)
  variables = bench.random_variables(model, shape)
  state = bench.make_state(model, variables, "full_finetune", 1000, 3)
  del variables
  rng = jax.random.key(0)
  step = jax.jit(train.train_step, donate_argnums=0)
  results = {}

  # ---- Synthetic: one batch on the device -------------------------------------
  batch = jax.device_put(bench.random_batch(shape, np.random.default_rng(0)))
  t = time.perf_counter()
  state, _ = step(state, batch, rng)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t
  seconds, state = timed_steps(step, state, iter(lambda: batch, None), rng, args.warmup, args.steps)
  results["synthetic"] = {"img_s": args.steps * args.batch / seconds,
                          "step_ms": seconds / args.steps * 1e3, "first_step_s": compile_s}
  print(f"synthetic: {results['synthetic']['img_s']:,.0f} img/s", flush=True)

  # ---- Through the pipeline ----------------------------------------------------
  source = make_source(args.source, args.images)
  options = grain.ReadOptions(num_threads=args.threads, prefetch_buffer_size=args.threads) \
      if args.threads else None
  host = iter(data.train_dataset(source, batch_size=args.batch, image_size=args.size, channels=3,
                                 augment=True, seed=0, read_options=options))
  next(host)   # Starts the reader threads.
  t, n = time.perf_counter(), max(args.steps // 2, 2)
  for _ in range(n):
    next(host)
  alone = n * args.batch / (time.perf_counter() - t)
  seconds, state = timed_steps(step, state, prefetch_to_device(host), rng, args.warmup, args.steps)
  results["pipeline"] = {"img_s": args.steps * args.batch / seconds,
                         "step_ms": seconds / args.steps * 1e3, "host_pipeline_img_s": alone,
                         "source": repr(source)}
  print(f"pipeline: {results['pipeline']['img_s']:,.0f} img/s "
        f"(host pipeline alone {alone:,.0f} img/s)", flush=True)

  goals = {k: {"goal_img_s": v, "img_s": results[k]["img_s"],
               "met": None if dry else bool(results[k]["img_s"] >= v)} for k, v in GOALS.items()}
  print(f"\n{args.model}, bf16 compute / float32 params, batch {args.batch}, {args.size} px, "
        f"{machine['device_kind']}{' (DRY RUN: not GPU numbers)' if dry else ''}")
  print("| measurement | img/s | step (ms) | goal on one H100 | met |\n|---|---|---|---|---|")
  for k, r in results.items():
    met = "-" if dry else ("yes" if goals[k]["met"] else "NO")
    print(f"| {k} | {r['img_s']:,.0f} | {r['step_ms']:.1f} | >= {GOALS[k]:,} | {met} |")
  for a in ANCHORS:
    print(f"| anchor: {a['what']} | {a['img_s']:,} | - | - | - |")

  out = {"machine": machine, "dry_run": dry, "xla_flags": os.environ["XLA_FLAGS"],
         "flags_before_jax": flags_before_jax,
         "settings": {k: getattr(args, k) for k in ("model", "batch", "size", "steps", "warmup",
                                                      "source", "images", "threads")}
         | {"compute_dtype": "bfloat16", "param_dtype": "float32", "layout": "NHWC"},
         "results": results, "goals": goals, "anchors": list(ANCHORS)}
  os.makedirs(args.workdir, exist_ok=True)
  path = os.path.join(args.workdir, "bench_gpu.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
