"""The `jtl` command: one argparse front, a subcommand per task (`jtl COMMAND --help`).

  jtl train CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR
  jtl strategy show CONFIG[:ARGS] [--config.FIELD=VALUE ...]
  jtl diagnose CONFIG[:ARGS] [--sources A,B] [--layers L,..] [--out F.json]
                           transferability scores per source and stage, before training
  jtl recommend CONFIG[:ARGS] [--out F.json]
                           a strategy, cut depth and lr range from cheap signals
  jtl predict --checkpoint DIR IMAGE [IMAGE ...]
  jtl adapt CHECKPOINT --target DATASET --workdir DIR [--classes 0-4]
                           AdaBN: the checkpoint's BatchNorm statistics recomputed on the target
  jtl convert SRC DST      (SRC: HF folder or hub id, .pth, BiT .npz, jtl workdir; DST: a new workdir)
  jtl sweep STUDY.py [--workdir DIR] [--print_commands]   run a study's grid (experiments/)
  jtl report DIR           RESULTS.md and plots from a sweep's results.jsonl
  jtl list                 strategies, datasets, models and checkpoint formats

The config commands (train, strategy show, diagnose, recommend) hand the config and the
rest of the command line to jtl/main.py, where ml_collections' config_flags applies the
--config.FIELD=VALUE overrides; `jtl train CONFIG --help` shows a config's arguments and
fields. A study file run as a script (`python experiments/NAME.py`) takes `jtl sweep`'s
flags through `sweep_args`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from jtl.config import first_line
from jtl.main import fail, restore_sigterm, stop_on_sigterm, stopped

USAGE = __doc__.split("\n", 2)[2].split("\n\n")[0]


class Parser(argparse.ArgumentParser):
  """argparse whose refusals are one `jtl: error:` sentence, exit code 2."""

  def error(self, message):
    fail(f"{message} (see {self.prog} --help).")


# ---------------------------------------------------------------------------
# The parser: one subcommand per task, each with its own arguments.
# ---------------------------------------------------------------------------
def parser() -> Parser:
  p = Parser(prog="jtl", description=__doc__.splitlines()[0], epilog="forms:\n" + USAGE,
             formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
                 prog, max_help_position=14))
  sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

  train = _config_command(sub, "train", "train one run of a config",
                          "Train one run: CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR.")
  train.add_argument("--workdir", metavar="DIR",
                     help="where checkpoints, metrics and the summary go (required)")
  train.add_argument("--dry_run", action="store_true",
                     help="print the images per class in each split and what the strategy "
                     "trains, and exit")

  strategy = sub.add_parser("strategy", help="what a strategy trains (strategy show CONFIG)",
                            description="Inspect a config's transfer strategy.")
  _config_command(strategy.add_subparsers(dest="action", metavar="ACTION", required=True), "show",
                  "what each parameter does under the config's strategy: trained, frozen, lr",
                  "Print which parameters the config's strategy trains, freezes, and at what lr "
                  "(the dry run of jtl/dry_run.py).", mode="--dry_run")

  diagnose = _config_command(sub, "diagnose", "transferability scores per source and stage",
                             "Score how well each source's frozen features fit the target, "
                             "stage by stage, before training (jtl/diagnose/estimate.py).",
                             mode="--diagnose")
  diagnose.add_argument("--sources", metavar="A,B", help="sources to score besides config.init")
  diagnose.add_argument("--layers", metavar="L,..", help="layers to score (default: all)")
  diagnose.add_argument("--out", metavar="F.json", help="also write the scores as JSON here")

  recommend = _config_command(sub, "recommend", "a strategy, cut depth and lr range",
                              "Recommend a strategy, cut depth and lr range from cheap signals "
                              "(jtl/diagnose/recommend.py).", mode="--recommend")
  recommend.add_argument("--out", metavar="F.json", help="also write the result as JSON here")

  predict = sub.add_parser("predict", help="top-k classes of image files under a checkpoint",
                           description="Top-k predictions of a checkpoint on image files, with "
                           "the checkpoint's own preprocessing (jtl/predict.py).")
  predict.add_argument("--checkpoint", required=True,
                       help="a jtl workdir, or hf:DIR, torchvision:FILE, bit:FILE, orbax:DIR")
  predict.add_argument("--top_k", type=int, default=5, help="classes shown per image (default 5)")
  predict.add_argument("images", nargs="+", metavar="IMAGE")
  predict.add_argument("--verbose", action="store_true",
                       help="show library warnings and the full traceback of an error")
  predict.set_defaults(run=_predict)

  adapt = sub.add_parser("adapt", help="AdaBN: a checkpoint's BatchNorm statistics recomputed on "
                         "a target's unlabeled images", description="Recompute every BatchNorm's "
                         "statistics of a checkpoint on a target's unlabeled train images (AdaBN, "
                         "no training), write the result as a workdir and print the target's "
                         "test accuracy before and after (jtl/adabn.py).")
  adapt.add_argument("checkpoint", metavar="CHECKPOINT",
                     help="a jtl workdir, or hf:DIR, torchvision:FILE, bit:FILE, orbax:DIR")
  adapt.add_argument("--target", required=True, metavar="DATASET",
                     help="the target dataset, e.g. fashion_mnist+shift:blur:5 or folder:PATH")
  adapt.add_argument("--workdir", required=True, metavar="DIR",
                     help="a new folder for the adapted checkpoint (config.init and jtl predict "
                     "read it) and its summary.json")
  adapt.add_argument("--classes", default="all", metavar="IDS",
                     help="the target classes the checkpoint predicts, e.g. 0-4 (default all)")
  adapt.add_argument("--data_dir", help="where the target dataset lives (as data.data_dir)")
  adapt.add_argument("--batch_size", type=int, default=256, help="images per batch (default 256)")
  adapt.add_argument("--verbose", action="store_true",
                     help="show library warnings and the full traceback of an error")
  adapt.set_defaults(run=_adapt)

  convert = sub.add_parser("convert", help="a checkpoint of another format into a jtl workdir",
                           description="Convert a checkpoint into a jtl workdir (orbax checkpoint "
                           "plus model.json).")
  convert.add_argument("src", metavar="SRC",
                       help="HF folder or hub id, .pth, BiT .npz, or jtl workdir (hf:, "
                       "torchvision:, bit:, orbax: prefixes)")
  convert.add_argument("dst", metavar="DST", help="a new workdir")
  convert.add_argument("--verbose", action="store_true",
                       help="show library warnings and the full traceback of an error")
  convert.set_defaults(run=_convert)

  sweep = sub.add_parser("sweep", help="run a study's grid of cells (experiments/)",
                         description="Run a study's grid of cells, then write its RESULTS.md.")
  sweep_arguments(sweep, study_file=True)
  sweep.set_defaults(run=lambda args, _: run_sweep(args))

  report = sub.add_parser("report", help="RESULTS.md and plots from a sweep's results.jsonl",
                          description="Write RESULTS.md and plots from a sweep's results.jsonl.")
  report.add_argument("dir", metavar="DIR", help="a sweep's workdir holding results.jsonl")
  report.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
  report.set_defaults(run=_report)

  list_ = sub.add_parser("list", help="strategies, datasets, models and checkpoint formats",
                         description="List everything a config can name.")
  list_.set_defaults(run=lambda args, _: print(listing()))
  for command in sub.choices.values():
    command.set_defaults(parser=command)   # For its error messages; strategy show keeps its own.
  return p


def _config_command(sub, name: str, summary: str, description: str, mode: str | None = None):
  """A subcommand that runs jtl/main.py on CONFIG; `mode` is the flag that selects it there.
  Its own --help without CONFIG; with CONFIG, the config's help (jtl/main.py)."""
  p = sub.add_parser(name, help=summary, description=description, add_help=False,
                     epilog="Any --config.FIELD=VALUE overrides a config field; "
                     "CONFIG --help lists the config's arguments and fields.")
  p.add_argument("-h", "--help", action="store_true",
                 help="this help; after CONFIG, the config's arguments and fields")
  p.add_argument("config", nargs="?", metavar="CONFIG[:ARGS]",
                 help="a config file and its argument string, e.g. configs/transfer.py:shots=5")
  p.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
  p.set_defaults(run=_run_config, parser=p, mode=mode, passes_through=True)
  return p


def _positive_int(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
  return int(text)


def _jobs(text: str) -> int | str:
  return text if text == "auto" else _positive_int(text)


def sweep_arguments(p: argparse.ArgumentParser, study_file: bool = True) -> None:
  """`jtl sweep`'s arguments; a study file run as a script takes them without STUDY.py."""
  if study_file:
    p.add_argument("study", metavar="STUDY.py",
                   help="a study file, e.g. experiments/seed_transfer.py")
  p.add_argument("--workdir", metavar="DIR", help="where cells, results.jsonl and RESULTS.md go "
                 "(default runs/STUDY_NAME)")
  p.add_argument("--print_commands", action="store_true",
                 help="print one ./launch.sh line per unfinished cell and exit")
  p.add_argument("--no_report", action="store_true", help="do not write RESULTS.md")
  p.add_argument("--slurm", action="store_true",
                 help="submit the next stage's unfinished cells as one SLURM job array (one "
                 "cell per task, in the shared workdir); call again to collect their results "
                 "and submit the next stage (jtl/slurm.py)")
  p.add_argument("--sbatch", default="", metavar="OPTIONS",
                 help='with --slurm: options for sbatch, e.g. --sbatch="-p cpu -t 60"')
  p.add_argument("--resubmit", action="store_true",
                 help="with --slurm: submit cells again that an earlier array holds")
  p.add_argument("--jobs", type=_jobs, default="auto", metavar="N",
                 help="run up to N cells of a stage side by side, each in its own worker "
                 "process; results are those of the serial run. Default auto: one per CPU "
                 "core, at most 4 and one per 4 GiB of memory; 1 on a GPU or TPU "
                 "(jtl/workers.py)")
  p.add_argument("--diagnose", action="store_true",
                 help="per transfer cell: weight drift and CKA per stage and a feature "
                 "picture, written to its workdir and shown by the report")
  p.add_argument("--verbose", action="store_true",
                 help="show library warnings and the full traceback of an error")


def sweep_args(argv: list[str] | None = None, study=None) -> argparse.Namespace:
  """`jtl sweep`'s flags parsed; with `study` (a study file run as a script, e.g.
  `python experiments/seed_transfer.py --workdir DIR`) there is no STUDY.py and
  --workdir defaults to runs/NAME.

  >>> sweep_args(["--print_commands"], study=STUDY).workdir     # STUDY.name == "seed_transfer"
  'runs/seed_transfer'
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if study is None:
    p = Parser(prog="jtl sweep", description="Run a study's grid of cells.")
  else:
    p = Parser(description=f"Run study {study.name}'s grid of cells, then write its RESULTS.md"
               + (f" (budget: {study.budget})." if study.budget else "."))
  sweep_arguments(p, study_file=study is None)
  if study is not None:
    p.set_defaults(workdir=os.path.join("runs", study.name))
  return p.parse_args(argv)


# ---------------------------------------------------------------------------
# What each subcommand does.
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = parser()
  if not argv:
    p.print_help(sys.stderr)
    return 2
  args, extra = p.parse_known_args(["--help"] if argv == ["help"] else argv)
  if extra and not getattr(args, "passes_through", False):
    args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
  saved = stop_on_sigterm()
  try:
    return args.run(args, extra) or 0
  except BrokenPipeError:   # `jtl sweep ... --print_commands | head`: the reader has enough.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
  except (KeyboardInterrupt, Exception) as e:   # Ctrl-C, SIGTERM: one line, exit 130 / 143.
    code = _interrupted(e, getattr(args, "verbose", False))
    if code is None:
      raise
    return code
  finally:
    restore_sigterm(saved)


def _run_config(args: argparse.Namespace, extra: list[str]) -> int:
  """train / strategy show / diagnose / recommend: jtl/main.py with the config and the rest."""
  if not args.config:
    if args.help:
      args.parser.print_help()
      return 0
    args.parser.error("CONFIG is required, e.g. configs/transfer.py:strategy=linear_probe")
  argv = ["jtl", f"--config={args.config}"]
  argv += [args.mode] if args.mode else []
  argv += [f"--{k}={v}" for k in ("workdir", "sources", "layers", "out")
           if (v := getattr(args, k, None)) is not None]
  argv += [f"--{k}" for k in ("dry_run", "verbose", "help") if getattr(args, k, False)]
  from jtl import main as run
  run.main(argv + extra)
  return 0


def _interrupted(e: BaseException, verbose: bool = False) -> int | None:
  """For Ctrl-C or SIGTERM (jtl.main.stopped): one line on stderr, and the exit code (130,
  143); None for any other error, or with --verbose (the traceback shows)."""
  if verbose or os.environ.get("JTL_TRACEBACK"):
    return None
  line_code = stopped(e)
  if line_code is None:
    return None
  print(line_code[0], file=sys.stderr)
  return line_code[1]


def quiet_libraries(verbose: bool) -> None:
  """Hides library log lines that say nothing to a researcher (orbax's "Metadata file does
  not exist", its save and restore chatter) unless --verbose."""
  import logging as py_logging

  from absl import logging
  logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
  py_logging.getLogger("asyncio").setLevel(py_logging.WARNING if verbose else py_logging.CRITICAL)


def _predict(args: argparse.Namespace, _) -> int:
  quiet_libraries(args.verbose)
  from jtl import predict   # JAX is imported only here.
  try:
    print(predict.describe(args.checkpoint, args.images, args.top_k))
  except (ValueError, FileNotFoundError) as e:
    if args.verbose:
      raise
    fail(first_line(e))
  return 0


def _adapt(args: argparse.Namespace, _) -> int:
  quiet_libraries(args.verbose)
  from jtl import adabn   # JAX is imported only here.
  from jtl.config import parse_classes
  try:
    s = adabn.adapt_checkpoint(args.checkpoint, args.target, args.workdir,
                               classes=parse_classes(args.classes), data_dir=args.data_dir,
                               batch_size=args.batch_size)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    if args.verbose:
      raise
    fail(first_line(e))
  print(f"{args.target}: test accuracy {100 * s['test_accuracy_before_adabn']:.1f} % before "
        f"AdaBN, {100 * s['test_accuracy']:.1f} % after (BatchNorm statistics from "
        f"{s['target_train_examples']} unlabeled train images)\nwrote {args.workdir}")
  return 0


def _convert(args: argparse.Namespace, _) -> int:
  from jtl import convert
  quiet_libraries(args.verbose)
  try:
    meta = convert.convert(args.src, args.dst)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    if args.verbose:
      raise
    fail(first_line(e))
  print(f"wrote {args.dst}: {meta['model']['name']}, {meta['model']['num_classes']} classes, "
        f"{meta['data']['image_size']} px")
  return 0


def _report(args: argparse.Namespace, _) -> int:
  from jtl import report
  try:
    print(report.write_report(args.dir))
  except (ValueError, FileNotFoundError) as e:
    if args.verbose:
      raise
    fail(first_line(e))
  return 0


def run_study(study, argv: list[str] | None = None) -> int:
  """A study file run as a script: `python experiments/NAME.py [--workdir DIR] ...`.

  >>> sys.exit(run_study(STUDY))   # at the end of experiments/seed_transfer.py  # doctest: +SKIP
  """
  args = sweep_args(argv, study)
  saved = stop_on_sigterm()
  try:
    return run_sweep(args, study)
  except (KeyboardInterrupt, Exception) as e:   # Ctrl-C, SIGTERM: one line, exit 130 / 143.
    code = _interrupted(e, args.verbose)
    if code is None:
      raise
    return code
  finally:
    restore_sigterm(saved)


def run_sweep(args: argparse.Namespace, study=None) -> int:
  """`jtl sweep`: run the study's unfinished cells, then write RESULTS.md; 2 on a bad study."""
  verbose = getattr(args, "verbose", False)
  quiet_libraries(verbose)
  from jtl import report, sweep
  try:
    study = study or sweep.load_study(args.study)
    root = args.workdir or os.path.join("runs", study.name)
    if args.slurm:
      from jtl import slurm
      slurm.submit(study, root, shlex.split(args.sbatch), resubmit=args.resubmit)
      if not all(c.finished for c in sweep.cells(study, root)):
        return 0   # The report waits for the last array.
    else:
      sweep.run(study, root, print_commands=args.print_commands, diagnose=args.diagnose,
                jobs=args.jobs)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    if os.environ.get("JTL_TRACEBACK") or verbose:
      raise
    print(f"jtl: error: {first_line(e)}", file=sys.stderr)
    return 2
  if not args.print_commands and not args.no_report and study.report:
    text = report.write_report(root)
    print("\n" + text)
    print(f"\nwrote {os.path.join(root, report.RESULTS_MD)} and its plots")
  return 0


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
  sys.exit(main())
