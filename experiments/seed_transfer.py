r"""The seed article's study: source -> target transfer on Fashion-MNIST, three ways.

  ./launch.sh experiments/seed_transfer.py                # one seed, ~8 min on 2 CPU cores
  ./launch.sh experiments/seed_transfer.py --seeds 0,1,2  # mean ± std over seeds
  ./launch.sh experiments/seed_transfer.py --strategies all --shots 5,20 --lrs 0.01,0.1 \
      --workdir runs/strategy_grid                          # every preset x data size

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
TITLES = {"linear_probe": "head only", "full_finetune": "full fine-tune",
          "scratch": "from scratch"}
ALL = ("linear_probe,partial:2,partial:3,surgical:stage4,discriminative,gradual_unfreeze,"
       "lp_ft,bitfit,norm_only,full_finetune,scratch")


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
  parser.add_argument("--shots", default="10", help="comma-separated images per class")
  parser.add_argument("--strategies", default="linear_probe,full_finetune,scratch",
                      help=f"comma-separated strategies, or 'all' ({ALL})")
  args = parser.parse_args(argv)

  from absl import logging
  from jtl import train  # After argparse, so --help is instant.
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(",")]
  lrs = [float(lr) for lr in args.lrs.split(",")]
  shots_list = [int(k) for k in args.shots.split(",")]
  names = (ALL if args.strategies == "all" else args.strategies).split(",")
  source_dir = os.path.join(args.workdir, "source")
  src_cfg = load_config("source", "" if args.source_steps is None else f"steps={args.source_steps}")
  print(f"== source: {src_cfg.model.name} on {src_cfg.data.name} classes {src_cfg.data.classes}",
        flush=True)
  source = train.train_and_evaluate(src_cfg, source_dir)

  runs = []  # One row per (shots, strategy, lr, seed).
  for shots in shots_list:
    for name in names:
      for lr in lrs:
        for seed in seeds:
          arg = f"strategy={name},init={source_dir},shots={shots},lr={lr}"
          if args.target_steps is not None:
            arg += f",steps={args.target_steps}"
          cfg = load_config("transfer", arg)
          cfg.seed = seed
          title = TITLES.get(name, name)
          print(f"== target: {title} ({name}), {shots} shots, lr {lr}, seed {seed}", flush=True)
          workdir = os.path.join(args.workdir, f"{name.replace(':', '-')}_{shots}shot_lr{lr}_seed{seed}")
          summary = train.train_and_evaluate(cfg, workdir)
          runs.append({**summary, "strategy": title, "preset": name, "shots": shots, "lr": lr,
                       "seed": seed})

  table = report(source, runs)
  print("\n" + table)
  with open(os.path.join(args.workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    chosen = [{"strategy": t, "shots": k, "lr": c["lr"],
               "test_accuracy": [r["test_accuracy"] for r in c["runs"]]}
              for (t, k), c in select(runs).items()]
    json.dump({"source": source, "target": runs, "selected": chosen}, f, indent=2)
  plot(select(runs), os.path.join(args.workdir, "results.png"))
  print(f"\nwrote {args.workdir}/results.md, results.json, results.png")


def select(runs: list[dict]) -> dict:
  """Per (strategy, shots), the lr with the best mean final validation accuracy, and its runs."""
  best = {}
  for key in dict.fromkeys((r["strategy"], r["shots"]) for r in runs):
    by_lr = {}
    for r in runs:
      if (r["strategy"], r["shots"]) == key:
        by_lr.setdefault(r["lr"], []).append(r)
    lr = max(by_lr, key=lambda lr: statistics.mean(r["val_accuracy"] for r in by_lr[lr]))
    best[key] = {"lr": lr, "runs": by_lr[lr]}
  return best


def _mean(values) -> str:
  values = list(values)
  spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
  return f"{statistics.mean(values):.3f}{spread}"


def report(source: dict, runs: list[dict]) -> str:
  lines = [f"source: classes 0-4, test accuracy {source['test_accuracy']:.3f} "
           f"({source['steps']} steps, {source['train_time_s']:.0f} s)", "",
           "target: classes 5-9; lr chosen per strategy and shots by validation accuracy "
           "(20 images per class held out of train); "
           f"test accuracy on {runs[0]['test_examples']} test images", "",
           "| shots | strategy | lr (by val) | val accuracy | test accuracy | seeds | trainable params | train time (s) |",
           "|---|---|---|---|---|---|---|---|"]
  for (title, shots), chosen in select(runs).items():
    rs = chosen["runs"]
    lines.append(f"| {shots} | {title} | {chosen['lr']:g} | {_mean(r['val_accuracy'] for r in rs)} | "
                 f"{_mean(r['test_accuracy'] for r in rs)} | {len(rs)} | "
                 f"{rs[0]['trainable_params']:,} | {statistics.mean(r['train_time_s'] for r in rs):.0f} |")
  lines += ["", "all runs:", "", "| shots | strategy | lr | seed | val accuracy | test accuracy |",
            "|---|---|---|---|---|---|"]
  lines += [f"| {r['shots']} | {r['strategy']} | {r['lr']:g} | {r['seed']} | {r['val_accuracy']:.3f} | "
            f"{r['test_accuracy']:.3f} |" for r in runs]
  return "\n".join(lines)


def plot(selected: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  titles = list(dict.fromkeys(t for t, _ in selected))
  shots = sorted({k for _, k in selected})
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(titles) * len(shots)), 3.4))
  width = 0.8 / len(shots)
  for j, k in enumerate(shots):
    means = [statistics.mean(r["test_accuracy"] for r in selected[(t, k)]["runs"]) for t in titles]
    xs = [i + j * width for i in range(len(titles))]
    ax.bar(xs, means, width, label=f"{k} shots")
    for x, m in zip(xs, means):
      ax.text(x, m + 0.01, f"{m:.2f}", ha="center", fontsize=8)
  ax.set_xticks([i + width * (len(shots) - 1) / 2 for i in range(len(titles))], titles,
                rotation=20, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("target test accuracy")
  ax.set_title("Fashion-MNIST 0-4 -> 5-9, lr chosen on validation")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  sys.exit(main())
