r"""Do the cheap signals predict what the sweeps measured? Transferability scores and
`jtl recommend`, checked against the shipped studies' real accuracies.

  ./launch.sh experiments/diagnose.py        # ~5 min on 2 CPU cores; needs the runs below
  ./launch.sh experiments/diagnose.py --quick   # one seed of each, no lr range test

Needs the workdirs of three shipped studies (their source checkpoints, base models and
results.jsonl): runs/transferability, runs/strategy_ablation and runs/cross_domain
(./launch.sh experiments/NAME.py makes each).

1. Scores vs reality (transferability): on Fashion-MNIST 5-9 at 50 shots, the 10
   candidates (source A or base model B_s) x (cut stem..stage4) of the transferability
   study. Each score is computed on the candidate's features at its cut; the weighted
   Kendall tau (scipy.stats.weightedtau, as in TLlib's model-selection benchmark) is
   taken between the scores and the test accuracies the sweep measured, with the cut
   frozen (AnB, BnB) and fine-tuned (AnB+, BnB+), per seed. The scores use a fresh
   50-shot draw that none of the candidates trained on. A's whole backbone frozen is
   also rerun at the linear probe's lr (runs/diagnose/), to see how much of its drop
   is the training recipe.
2. `jtl recommend` vs the sweeps: for each setting (study x shots) and seed, the
   recommended strategy (among the study's strategies) is a hit when its mean test
   accuracy lies inside the 95% interval of the best strategy's mean; its wall time is
   compared with the sweep's compute for that setting (the sum of the cells'
   train_time_s, which leaves out their set-up and compile: the fraction is an upper
   bound). strategy_ablation is where the rule was designed; cross_domain is held out.
   Fixed choices (always full_finetune, ...) are scored the same way beside it.

Writes experiments/diagnose/RESULTS.md and results.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np
from scipy import stats

from jtl import report, results, runtime, sweep, train
from jtl.diagnose import estimate, recommend, transferability

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cross_domain, strategy_ablation, transferability as yosinski  # noqa: E402

OUT = os.path.join(HERE, "diagnose")
SCORES = ("logme", "h_score", "ridge", "knn", "leep", "nce")
FRESH = 1000    # Scores use the data draw of seed FRESH + s, which no candidate trained on.
STUDIES = {"strategy_ablation": (strategy_ablation.STUDY, "designed on"),
           "cross_domain": (cross_domain.STUDY, "held out")}


def _rows(name: str) -> list[dict]:
  root = os.path.join("runs", name)
  rows = results.read_results(root)
  if not rows:
    raise SystemExit(f"experiments/diagnose.py: {root}/results.jsonl is missing; run "
                     f"./launch.sh experiments/{name}.py first.")
  return rows


def _config(study, stage_name: str, cell_fields: dict):
  stage = next(s for s in study.stages if s.name == stage_name)
  config = sweep.load_config(stage.config)
  for field, value in {**stage.fixed, **cell_fields}.items():
    sweep._set(config, field, value)
  return config


def scores_vs_accuracy(seeds) -> dict:
  """Weighted Kendall tau per score, seed and accuracy kind (frozen / fine-tuned)."""
  rows = [r for r in _rows("transferability") if r["stage"] == "transfer"]
  acc = {(r["kind"], r["cut"], r["seed"]): r["test_accuracy"] for r in rows}
  root = os.path.abspath(os.path.join("runs", "transferability"))
  taus, table = collections.defaultdict(list), []
  for seed in seeds:
    # Scored on a fresh 50-shot draw: B_s was trained on seed s's draw, and its features
    # would flatter themselves there.
    config = _config(yosinski.STUDY, "transfer", {"seed": FRESH + seed})
    sources = {"A": os.path.join(root, "source", "run"),
               "B": os.path.join(root, "base", f"seed={seed}")}
    cand = []
    for kind, path in sources.items():
      config.init = path
      for r in estimate.estimate(config, [path], (*yosinski.CUTS, estimate.HEAD), log=lambda _: None):
        if r["layer"] == estimate.HEAD:     # LEEP / NCE: one value per source, every cut.
          head = r
          continue
        cand.append({"source": kind, "cut": r["layer"], **{s: r[s] for s in SCORES[:4]},
                     "frozen": acc[(f"{kind}nB", r["layer"], seed)],
                     "tuned": acc[(f"{kind}nB+", r["layer"], seed)]})
      for c in cand:
        if c["source"] == kind:
          c.update(leep=head["leep"], nce=head["nce"])
    for c in cand:
      table.append({"seed": seed, **c})
    for s in SCORES:
      for target in ("frozen", "tuned"):
        tau = stats.weightedtau([c[s] for c in cand], [c[target] for c in cand]).statistic
        taus[(s, target)].append(float(tau))
      a = [c for c in cand if c["source"] == "A"]     # The source's cuts alone.
      taus[(s, "frozen_A")].append(float(stats.weightedtau([c[s] for c in a],
                                                           [c["frozen"] for c in a]).statistic))
  return {"taus": {f"{s}/{t}": v for (s, t), v in taus.items()}, "candidates": table}


def recipe_check(seeds, lr: float = 0.3) -> list[dict]:
  """A's whole backbone frozen (AnB at stage4) rerun at `lr`, the linear probe's lr in the
  strategy ablation, instead of the transferability study's 0.03."""
  rows = {r["seed"]: r for r in _rows("transferability")
          if r["stage"] == "transfer" and r.get("kind") == "AnB" and r.get("cut") == "stage4"}
  out = []
  for seed in seeds:
    config = _config(yosinski.STUDY, "transfer", {**rows[seed]["fields"], "optim.lr": lr})
    workdir = os.path.join("runs", "diagnose", f"AnB_stage4_lr={lr}", f"seed={seed}")
    summary = train.train_and_evaluate(config, workdir)
    out.append({"seed": seed, "lr": lr, "test_accuracy": summary["test_accuracy"],
                "study_test_accuracy": rows[seed]["test_accuracy"]})
  return out


def recommend_vs_sweeps(seeds, lr_test: bool) -> list[dict]:
  out = []
  for name, (study, role) in STUDIES.items():
    rows = [r for r in _rows(name) if r["stage"] == "target"]
    among = list(dict.fromkeys(r["strategy"] for r in rows))
    source = os.path.abspath(os.path.join("runs", name, "source", "run"))
    for shots in sorted({r["shots"] for r in rows}):
      here = [r for r in rows if r["shots"] == shots]
      means = {s: report.mean_ci([r["test_accuracy"] for r in here if r["strategy"] == s])
               for s in among}
      best = max(means, key=lambda s: means[s][0])
      sweep_s = sum(r["train_time_s"] for r in here)
      cell = next(r for r in here)
      for seed in seeds:
        fields = {k: v for k, v in cell["fields"].items()
                  if k not in ("strategy.name", "optim.lr", "init", "reg.l2_sp")}
        config = _config(study, "target", {**fields, "seed": seed, "init": source})
        rec = recommend.recommend(config, among=among, lr_test=lr_test)
        m = means[rec["strategy"]][0]
        out.append({"study": name, "role": role, "shots": shots, "seed": seed,
                    "recommended": rec["strategy"], "cut": rec["cut"], "accuracy": m,
                    "best": best, "best_ci": [float(v) for v in means[best]],
                    "hit": bool(means[best][1] <= m),
                    "seconds": rec["seconds"], "sweep_s": sweep_s,
                    "lr": rec["lr_test"] and rec["lr_test"]["lr"],
                    "lr_range": rec["lr_test"] and rec["lr_test"]["lr_range"],
                    "sweep_lr": next((r["fields"].get("optim.lr") for r in here
                                      if r["strategy"] == rec["strategy"]), None),
                    "fixed": {s: bool(means[best][1] <= means[s][0]) for s in among},
                    "why": rec["why"]})
        print(f"{name} shots={shots} seed={seed}: {rec['strategy']} "
              f"({'hit' if out[-1]['hit'] else 'miss'}; best {best}) in {rec['seconds']:.1f} s",
              flush=True)
  return out


def write(result: dict) -> str:
  taus, recs = result["scores"]["taus"], result["recommend"]
  lines = ["# Transferability scores and `jtl recommend`, checked against the sweeps", "",
           f"Command: `{result['command']}`; {result['date']}; {result['host']}. Float results "
           "differ across CPUs; what should survive another machine is the ranking of the "
           "scores and the hit counts, not the digits.", "",
           "## 1. Which score predicts the measured accuracy?", "",
           "Fashion-MNIST 5-9, 50 shots per class: 10 candidates per seed (the transferability "
           "study's source A and base model B_s, each cut at stem ... stage4). Weighted Kendall τ "
           "(scipy.stats.weightedtau, hyperbolic weights on the top ranks, as TLlib) between each "
           "score at the candidate's cut and the test accuracy the sweep measured with the layers "
           "through the cut copied and frozen (AnB, BnB) or fine-tuned (AnB+, BnB+). LEEP and NCE "
           "read the candidate's own head, so they give one value per source (ties across cuts; "
           "none among A's cuts). The scores are computed on a fresh 50-shot draw (seed "
           f"{FRESH} + s), since B_s was trained on seed s's. Mean over seeds [min, max].", "",
           "| score | τ_w vs frozen accuracy | τ_w vs fine-tuned accuracy | τ_w among A's 5 cuts "
           "(frozen) |", "|---|---|---|---|"]
  for s in SCORES:
    cells = []
    for t in ("frozen", "tuned", "frozen_A"):
      v = [x for x in taus[f"{s}/{t}"] if np.isfinite(x)]
      cells.append(f"{np.mean(v):+.2f} [{min(v):+.2f}, {max(v):+.2f}]" if v else "— (ties)")
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  best = max(SCORES, key=lambda s: np.mean(taus[f"{s}/frozen"]))
  steady = [s for s in SCORES if min(taus[f"{s}/frozen"]) > 0]   # nan (ties) is not > 0.
  lines += ["", f"Highest mean τ_w against the frozen-transfer accuracy: {best} "
            f"({np.mean(taus[best + '/frozen']):+.2f}); positive on every seed: "
            f"{', '.join(steady) if steady else 'none'}. TLlib reports, for 10 ImageNet models "
            "on 8 datasets, LogME 0.50–0.79, H-score 0.42–0.92, LEEP −0.26–0.70.", "",
            "The candidates, mean over seeds (accuracies in %):", "",
            "| source | cut | " + " | ".join(SCORES) + " | frozen acc | fine-tuned acc |",
            "|---|---|" + "---|" * (len(SCORES) + 2)]
  cands = result["scores"]["candidates"]
  for key in dict.fromkeys((c["source"], c["cut"]) for c in cands):
    cs = [c for c in cands if (c["source"], c["cut"]) == key]
    mean = lambda k: float(np.mean([c[k] for c in cs]))
    lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{mean(s):.3f}" for s in SCORES)
                 + f" | {100 * mean('frozen'):.1f} | {100 * mean('tuned'):.1f} |")
  frozen = sorted(float(np.mean([c["frozen"] for c in cands if (c["source"], c["cut"]) == k]))
                  for k in dict.fromkeys((c["source"], c["cut"]) for c in cands))
  recipe = result["scores"].get("recipe")
  lines += ["", f"Reading: the measured frozen accuracies span {100 * frozen[0]:.1f}–"
            f"{100 * frozen[-1]:.1f} %, but all except the lowest lie within "
            f"{100 * (frozen[-1] - frozen[1]):.1f} points of each other, inside the seeds' noise "
            "(the transferability study's intervals are ±1–4 points), so their order is mostly "
            "noise for any score to track. The one clear drop is A's whole backbone frozen (a "
            "linear probe trained by SGD at the study's lr), whose features every score rates "
            "highly."]
  if recipe:
    got = [r["test_accuracy"] for r in recipe]
    lines[-1] += (f" Rerun at the linear probe's own lr ({recipe[0]['lr']}, as the strategy "
                  f"ablation uses), that cell reaches {100 * np.mean(got):.1f} % "
                  f"({len(got)} seeds, {', '.join(f'{100 * g:.1f}' for g in got)}): part of the "
                  "drop is the recipe, not the features; the rest is not explained here.")
  lines += [""]
  lines += [
           "## 2. Does `jtl recommend` pick a strategy inside the best one's interval?", "",
           "Per setting and seed, the strategy `jtl recommend` chose among the study's; hit: its "
           "mean test accuracy over the sweep's seeds lies inside the 95% interval of the best "
           "strategy's mean. Compute: the recommendation's wall time (features, probes and a "
           f"{recommend.RANGE_STEPS}-step lr range test, compile included) over the sweep's summed "
           "train_time_s for that setting (cells' set-up and compile left out, so the fraction "
           "is an upper bound).", "",
           "| study (role) | shots | seed | recommended | its acc % | best (95% CI) | hit | "
           "seconds | % of sweep | lr suggested (range) | sweep's lr |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in recs:
    m, lo, hi = r["best_ci"]
    lr = (f"{r['lr']:.3g} ({r['lr_range'][0]:.2g}–{r['lr_range'][1]:.2g})" if r["lr"] else "—")
    lines.append(f"| {r['study']} ({r['role']}) | {r['shots']} | {r['seed']} | {r['recommended']} | "
                 f"{100 * r['accuracy']:.1f} | {r['best']} {100 * m:.1f} [{100 * lo:.1f}, "
                 f"{100 * hi:.1f}] | {'yes' if r['hit'] else 'no'} | {r['seconds']:.1f} | "
                 f"{100 * r['seconds'] / r['sweep_s']:.1f} | {lr} | {r['sweep_lr']} |")
  lines += ["", "Summary (a setting counts as a hit when the recommendation of the majority of "
            "its seeds is):", "", "| study (role) | settings | hits | recommendations hit | "
            "median % of sweep compute | ≤ 5% of compute |", "|---|---|---|---|---|---|"]
  for name, (_, role) in STUDIES.items():
    rs = [r for r in recs if r["study"] == name]
    settings = sorted({r["shots"] for r in rs})
    hits = sum(np.mean([r["hit"] for r in rs if r["shots"] == s]) > 0.5 for s in settings)
    frac = [100 * r["seconds"] / r["sweep_s"] for r in rs]
    lines.append(f"| {name} ({role}) | {len(settings)} | {hits} | "
                 f"{sum(r['hit'] for r in rs)}/{len(rs)} | {np.median(frac):.1f} | "
                 f"{sum(f <= 5 for f in frac)}/{len(rs)} |")
  with_lr = [r for r in recs if r["lr"] and r["sweep_lr"]]
  if with_lr:
    inside = sum(r["lr_range"][0] <= r["sweep_lr"] <= r["lr_range"][1] for r in with_lr)
    lines += ["", f"lr: the sweep's fixed lr for the recommended strategy lies inside the "
              f"suggested range in {inside}/{len(with_lr)} recommendations (those lrs were chosen "
              "by a pilot of the main study on validation, since folded into "
              "experiments/seed_transfer.py)."]
  made = collections.Counter(r["recommended"] for r in recs)
  lines += ["", "Choices made: " + ", ".join(f"{s} × {n}" for s, n in made.most_common()) + "."]
  fixed = collections.defaultdict(list)
  for r in recs:
    for s, hit in r["fixed"].items():
      fixed[s].append(hit)
  lines += ["", "The same test for a fixed choice in every setting and seed (no signals, no "
            "compute): " + ", ".join(f"{s} {sum(v)}/{len(v)}" for s, v in fixed.items()) + "."]
  settings = {(r["study"], r["shots"]) for r in recs}
  hit = sum(np.mean([r["hit"] for r in recs if (r["study"], r["shots"]) == k]) > 0.5
            for k in settings)
  cheap = sum(r["seconds"] <= 0.05 * r["sweep_s"] for r in recs)
  dear = [r for r in recs if r["seconds"] > 0.05 * r["sweep_s"]]
  always = [s for s, v in fixed.items() if all(v)]
  lines += ["", f"Against the goal (inside the best's interval in ≥ 80% of settings, at ≤ 5% of "
            f"the sweep's compute): {hit}/{len(settings)} settings ({100 * hit / len(settings):.0f}%); "
            f"{cheap}/{len(recs)} recommendations within 5% of their setting's compute"
            + (f" (the rest: settings whose whole sweep trains for at most "
               f"{max(r['sweep_s'] for r in dear) / 60:.1f} min, so the recommendation's fixed "
               "cost of loading, compiling and the range test weighs more)" if dear else "") + "."
            + (f" But {' and '.join(always)} chosen blindly {'is' if len(always) == 1 else 'are'} "
               "inside the interval everywhere: these sweeps cannot show the recommendation "
               "beating a fixed rule, only that it does not pick a losing strategy."
               if always else "")]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="seed 0 only and no lr range test")
  p.add_argument("--rewrite", action="store_true",
                 help="rewrite RESULTS.md from the results.json of an earlier run")
  args = p.parse_args(argv)
  if args.rewrite:
    with open(os.path.join(OUT, "results.json")) as f:
      text = write(json.load(f))
    with open(os.path.join(OUT, "RESULTS.md"), "w") as f:
      f.write(text)
    print(text)
    return 0
  runtime.enable_compilation_cache()
  seeds = (0,) if args.quick else (0, 1, 2)
  t0 = time.time()
  prov = sweep.provenance(["./launch.sh", "experiments/diagnose.py", *(argv or sys.argv[1:])])
  result = {"command": prov["command"], "date": prov["date"], "host": prov["host"],
            "scores": {**scores_vs_accuracy(seeds), "recipe": recipe_check(seeds)},
            "recommend": recommend_vs_sweeps(seeds, lr_test=not args.quick)}
  result["seconds"] = time.time() - t0
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(result, f, indent=2, default=str)
  text = write(result)
  with open(os.path.join(OUT, "RESULTS.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"wrote {OUT}/RESULTS.md in {result['seconds'] / 60:.1f} min")
  return 0


if __name__ == "__main__":
  sys.exit(main())
