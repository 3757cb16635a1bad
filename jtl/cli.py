"""The `jtl` command.

  jtl train CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR
  jtl strategy show CONFIG[:ARGS] [--config.FIELD=VALUE ...]
  jtl diagnose CONFIG[:ARGS] [--sources A,B] [--layers L,..] [--out F.json]
                           transferability scores per source and stage, before training
  jtl recommend CONFIG[:ARGS] [--out F.json]
                           a strategy, cut depth and lr range from cheap signals
  jtl predict --checkpoint DIR IMAGE [IMAGE ...]
  jtl convert SRC DST      (SRC: HF folder or hub id, .pth, BiT .npz, jtl workdir; DST: a new workdir)
  jtl sweep STUDY.py [--workdir DIR] [--print_commands]   run a study's grid (experiments/)
  jtl report DIR           RESULTS.md and plots from a sweep's results.jsonl
  jtl list                 strategies, datasets, models and checkpoint formats
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__.split("\n", 2)[2]


def main(argv: list[str] | None = None):
  argv = sys.argv[1:] if argv is None else argv
  from jtl import main as run
  if argv[:1] == ["train"] and len(argv) > 1:
    run.main(["jtl", f"--config={argv[1]}", *argv[2:]])
    return
  if argv[:2] == ["strategy", "show"] and len(argv) > 2:
    run.main(["jtl", f"--config={argv[2]}", "--dry_run", *argv[3:]])
    return
  if argv[:1] in (["diagnose"], ["recommend"]) and len(argv) > 1:
    run.main(["jtl", f"--config={argv[1]}", f"--{argv[0]}", *argv[2:]])
    return
  if argv[:1] == ["convert"] and len(argv) == 3:
    from jtl import convert
    try:
      meta = convert.convert(argv[1], argv[2])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
      run.fail(run.first_line(e))
    print(f"wrote {argv[2]}: {meta['model']['name']}, {meta['model']['num_classes']} classes, "
          f"{meta['data']['image_size']} px")
    return
  if argv[:1] == ["list"]:
    print(listing())
    return
  if argv[:1] in (["--help"], ["-h"], ["help"]):
    print(f"usage:\n{USAGE}")
    return
  if argv[:1] == ["sweep"]:
    from jtl import sweep
    sys.exit(sweep.main(argv[1:]))
  if argv[:1] == ["report"]:
    from jtl import report
    sys.exit(report.main(argv[1:]))
  if argv[:1] == ["predict"]:
    from jtl import predict
    try:
      return predict.main(argv[1:])
    except (ValueError, FileNotFoundError) as e:
      run.fail(run.first_line(e))
  print(f"usage:\n{USAGE}", file=sys.stderr)
  sys.exit(2)


def _tfds_prepared() -> list[str]:
  """TFDS datasets already prepared in the local data dir (no download needed)."""
  root = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  if not os.path.isdir(root):
    return []
  return sorted(d for d in os.listdir(root) if any(
      "dataset_info.json" in files for _, _, files in os.walk(os.path.join(root, d))))


def listing() -> str:
  """What `jtl list` prints: everything a config can name."""
  from jtl import adapt, data, models, strategy
  from jtl.convert.export import PREFIXES
  lines = ["strategies (strategy=NAME):"]
  lines += [f"  {k:<18} {v}" for k, v in strategy.DESCRIPTIONS.items()]
  lines += ["  (or --config.strategy.rules=\"(('head/.*','train'),('.*','freeze'))\")", "",
            "datasets (dataset=NAME):",
            "  fashion_mnist      Fashion-MNIST from Debian's dataset-fashion-mnist (else TFDS)",
            "  digits             scikit-learn's 8x8 digits (1437 train / 360 test)",
            "  folder:PATH        an ImageFolder tree, PATH/<class>/<image> or PATH/train + PATH/test",
            "  TFDS_NAME          any TFDS dataset; prepared here: "
            + (", ".join(_tfds_prepared()) or "none"),
            "  NAME+shift:C:S     NAME with corruption C at severity S (1-5), e.g. "
            "fashion_mnist+shift:blur:3;",
            "                     C is one of " + ", ".join(data.CORRUPTIONS)]
  lines += ["", "domain adaptation (--config.adapt.method=M, with --config.adapt.target=NAME):",
            "  " + ", ".join(adapt.METHODS) + " (jtl/adapt.py)"]
  lines += ["", "models (model=NAME):", "  " + ", ".join(models.MODELS) + "; BiT: "
            + ", ".join(models.BIT_MODELS) + "; auto (the init checkpoint's)"]
  lines += ["", "checkpoint formats (init=...):",
            "  DIR                a jtl workdir (a source run, or jtl convert's output)"]
  lines += [f"  {p + ':PATH':<18} {fmt}" for p, fmt in PREFIXES.items()]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
