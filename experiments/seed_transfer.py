r"""The seed article's study: source -> target transfer on Fashion-MNIST, three ways.

  ./launch.sh experiments/seed_transfer.py                # one seed, ~8 min on 2 CPU cores
  ./launch.sh experiments/seed_transfer.py --seeds 0,1,2  # mean ± std over seeds

1. Source: a small-stem ResNet-18 (width 0.25) trained on classes 0-4
   (configs/source.py defaults).
2. Target: classes 5-9 with 10 labelled images per class (configs/transfer.py),
   trained three ways: "head only" (linear_probe: backbone frozen), "full
   fine-tune" (everything trained from the source weights) and "from scratch"
   (the seed's pretrained=False baseline).
3. Each strategy is run at every learning rate of --lrs; the one with the best
   validation accuracy (held out of train, never test) is reported. A table of
   target test accuracy (5000 images) is printed and written to
   WORKDIR/results.json, WORKDIR/results.md and WORKDIR/results.png.

Each run lives in its own workdir, so an interrupted study picks up where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = (("head only", "linear_probe"), ("full fine-tune", "full_finetune"),
              ("from scratch", "scratch"))


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/seed_transfer")
  parser.add_argument("--seeds", default="0", help="comma-separated target seeds")
  parser.add_argument("--lrs", default="0.003,0.03,0.3",
                      help="learning rates tried per strategy; the best on validation is reported")
  parser.add_argument("--source_steps", type=int, default=None)
  parser.add_argument("--target_steps", type=int, default=None)
  parser.add_argument("--shots", type=int, default=10)
  args = parser.parse_args(argv)

  from absl import logging
  from jtl import train  # After argparse, so --help is instant.
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(",")]
  lrs = [float(lr) for lr in args.lrs.split(",")]
  source_dir = os.path.join(args.workdir, "source")
  src_cfg = load_config("source", "" if args.source_steps is None else f"steps={args.source_steps}")
  print(f"== source: {src_cfg.model.name} on {src_cfg.data.name} classes {src_cfg.data.classes}",
        flush=True)
  source = train.train_and_evaluate(src_cfg, source_dir)

  runs = []  # One row per (strategy, lr, seed).
  for title, name in STRATEGIES:
    for lr in lrs:
      for seed in seeds:
        arg = f"strategy={name},init={source_dir},shots={args.shots},lr={lr}"
        if args.target_steps is not None:
          arg += f",steps={args.target_steps}"
        cfg = load_config("transfer", arg)
        cfg.seed = seed
        print(f"== target: {title} ({name}), lr {lr}, seed {seed}", flush=True)
        workdir = os.path.join(args.workdir, f"{name}_lr{lr}_seed{seed}")
        runs.append({"strategy": title, "lr": lr, "seed": seed,
                     **train.train_and_evaluate(cfg, workdir)})

  table = report(source, runs, args.shots)
  print("\n" + table)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump({"source": source, "target": runs, "selected": select(runs)}, f, indent=2)
  plot(select(runs), os.path.join(args.workdir, "results.png"))
  print(f"\nwrote {args.workdir}/results.md, results.json, results.png")


def select(runs: list[dict]) -> dict:
  """Per strategy, the lr with the best mean final validation accuracy, and its runs."""
  best = {}
  for title in dict.fromkeys(r["strategy"] for r in runs):
    by_lr = {}
    for r in runs:
      if r["strategy"] == title:
        by_lr.setdefault(r["lr"], []).append(r)
    lr = max(by_lr, key=lambda lr: statistics.mean(r["val_accuracy"] for r in by_lr[lr]))
    best[title] = {"lr": lr, "runs": by_lr[lr]}
  return best


def _mean(values) -> str:
  values = list(values)
  spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
  return f"{statistics.mean(values):.3f}{spread}"


def report(source: dict, runs: list[dict], shots: int) -> str:
  lines = [f"source: classes 0-4, test accuracy {source['test_accuracy']:.3f} "
           f"({source['steps']} steps, {source['train_time_s']:.0f} s)", "",
           f"target: classes 5-9, {shots} images per class; lr chosen per strategy by "
           "validation accuracy (20 images per class held out of train); "
           f"test accuracy on {runs[0]['test_examples']} test images", "",
           "| strategy | lr (by val) | val accuracy | test accuracy | seeds | trainable params | train time (s) |",
           "|---|---|---|---|---|---|---|"]
  for title, chosen in select(runs).items():
    rs = chosen["runs"]
    lines.append(f"| {title} | {chosen['lr']:g} | {_mean(r['val_accuracy'] for r in rs)} | "
                 f"{_mean(r['test_accuracy'] for r in rs)} | {len(rs)} | "
                 f"{rs[0]['trainable_params']:,} | {statistics.mean(r['train_time_s'] for r in rs):.0f} |")
  lines += ["", "all runs:", "", "| strategy | lr | seed | val accuracy | test accuracy |",
            "|---|---|---|---|---|"]
  lines += [f"| {r['strategy']} | {r['lr']:g} | {r['seed']} | {r['val_accuracy']:.3f} | "
            f"{r['test_accuracy']:.3f} |" for r in runs]
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  titles = list(results)
  means = [statistics.mean(r["test_accuracy"] for r in results[t]["runs"]) for t in titles]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.bar(titles, means, color=["#4c72b0", "#55a868", "#c44e52"])
  for t, m in zip(titles, means):
    ax.text(t, m + 0.01, f"{m:.3f}", ha="center")
  ax.set_ylim(0, 1)
  ax.set_ylabel("target test accuracy")
  ax.set_title("Fashion-MNIST 0-4 -> 5-9, lr chosen on validation")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  sys.exit(main())
