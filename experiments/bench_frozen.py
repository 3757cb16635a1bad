r"""Benchmark: frozen parameters cost no backward pass and no optimizer state.

  ./launch.sh experiments/bench_frozen.py                         # ResNet-18, 224 px, batch 32
  ./launch.sh experiments/bench_frozen.py --model resnet50 --batch 16 --size 160

Times one jit-compiled `train_step` per strategy against an inference forward pass
of the same batch, and reports optimizer-state bytes per label. Targets from the
strategy issue: linear_probe step <= 1.15x the forward pass; partial:3 (last stage
+ head) step <= 0.40x the full fine-tune step. Prints a table and writes
WORKDIR/bench_frozen.json. Timings are the median of --repeats runs after one
warm-up; on a shared machine they vary, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

STRATEGIES = ("linear_probe", "partial:3", "surgical:stage4", "bitfit", "full_finetune")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--workdir", default="runs/bench")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jtl import models, optim, strategy, train
  from jtl.config import base_config

  model = models.get_model(args.model, num_classes=1000)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8),
           "label": rng.integers(0, 1000, args.batch).astype(np.int32),
           "mask": np.ones(args.batch, bool)}
  batch = jax.device_put(batch)

  def timed(fn, *a):
    jax.block_until_ready(fn(*a))  # Compile and warm up.
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times.append(time.perf_counter() - t)
    return statistics.median(times)

  config = base_config()
  config.total_steps = 100
  forward = train.make_apply_fn(model, (0.5,) * 3, (0.5,) * 3, ())
  t_forward = timed(jax.jit(lambda v, x: forward(v, x, train=False)[0]), variables, batch["image"])
  print(f"{args.model}, {args.size} px, batch {args.batch}, {jax.devices()[0].platform}: "
        f"inference forward {t_forward * 1e3:.0f} ms", flush=True)

  rows = []
  for name in STRATEGIES:
    config.strategy.name = name
    phase = strategy.resolve(config.strategy, variables["params"], 100).phases[0]
    fields, _ = train.phase_fields(config, model, phase, (0.5,) * 3, (0.5,) * 3)
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        batch_stats=variables["batch_stats"], opt_state=fields["tx"].init(variables["params"]),
        loss_fn=train.make_loss_fn(config.loss, 1000), **fields)
    # The whole new state is returned, or XLA would drop the backward pass as unused.
    # No donation: the same state is stepped repeatedly for timing.
    step = jax.jit(lambda s, b: train.train_step(s, b, jax.random.key(0)))
    t = timed(step, state, batch)
    per_label = optim.state_bytes_per_label(state.opt_state)
    rows.append({"strategy": name, "step_ms": t * 1e3, "x_forward": t / t_forward,
                 "trainable": int(sum(np.size(v) for k, v in _flat(state.params).items()
                                      if k not in state.frozen)),
                 "opt_state_bytes": per_label})
    print(f"  {name:<16} {t * 1e3:8.0f} ms  {t / t_forward:5.2f}x forward", flush=True)

  full = next(r for r in rows if r["strategy"] == "full_finetune")["step_ms"]
  for r in rows:
    r["x_full"] = r["step_ms"] / full
  lp = next(r for r in rows if r["strategy"] == "linear_probe")
  last = next(r for r in rows if r["strategy"] == "partial:3")
  checks = {"linear_probe <= 1.15x forward": lp["x_forward"] <= 1.15,
            "partial:3 <= 0.40x full": last["x_full"] <= 0.40}

  print("\n| strategy | step (ms) | x forward | x full | trainable params | optimizer state (bytes per label) |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    state = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["opt_state_bytes"].items()))
    print(f"| {r['strategy']} | {r['step_ms']:.0f} | {r['x_forward']:.2f} | {r['x_full']:.2f} | "
          f"{r['trainable']:,} | {state} |")
  print(f"| inference forward | {t_forward * 1e3:.0f} | 1.00 | {t_forward * 1e3 / full:.2f} | - | - |")
  for check, ok in checks.items():
    print(f"{'PASS' if ok else 'MISS'}: {check}")
  os.makedirs(args.workdir, exist_ok=True)
  out = os.path.join(args.workdir, "bench_frozen.json")
  with open(out, "w") as f:
    json.dump({"model": args.model, "size": args.size, "batch": args.batch,
               "device": str(jax.devices()[0]), "forward_ms": t_forward * 1e3,
               "rows": rows, "checks": checks}, f, indent=2)
  print(f"wrote {out}")


def _flat(tree):
  import flax.traverse_util as tu
  return tu.flatten_dict(tree, sep="/")


if __name__ == "__main__":
  main()
