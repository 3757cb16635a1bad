"""Command line: `python -m jtl.main --config=configs/transfer.py:ARGS --workdir DIR`.

`launch.sh CONFIG[:ARGS] [--config.field=value …] --workdir DIR` and `jtl train` /
`strategy show` / `diagnose` / `recommend` (jtl/cli.py) come here. The config file is
loaded by jtl/config.py; ml_collections' config_flags applies the --config.FIELD=VALUE
overrides.

Errors a user can fix (a bad config field, a missing file, a checkpoint that does
not fit, a workdir that cannot be written) end in one sentence on stderr; --verbose
(or JTL_TRACEBACK=1) shows the full trace. `--help` after a config prints the config's
docstring, its arguments with their defaults, and its fields.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import re
import signal
import sys
import textwrap

from absl import flags, logging
from ml_collections import config_flags

from jtl.config import first_line, load_module

_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the images per class in each split and "
                              "what the strategy trains, and exit.")
_DIAGNOSE = flags.DEFINE_bool("diagnose", False, "Print transferability estimates per source and "
                              "stage (jtl/diagnose/estimate.py) and exit.")
_RECOMMEND = flags.DEFINE_bool("recommend", False, "Recommend a strategy, cut depth and lr range "
                               "from cheap signals (jtl/diagnose/recommend.py) and exit.")
_SOURCES = flags.DEFINE_list("sources", [], "--diagnose: sources to score besides config.init.")
_LAYERS = flags.DEFINE_list("layers", [], "--diagnose: layers to score (default: all).")
_OUT = flags.DEFINE_string("out", None, "--diagnose / --recommend: also write the result as JSON here.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of an error.")

# OSError: a workdir that is a file, not writable, or a full disk; its message names the path.
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, OSError, flags.Error)


def verbose(argv=()) -> bool:
  return bool(os.environ.get("JTL_TRACEBACK")) or "--verbose" in argv or (
      flags.FLAGS.is_parsed() and _VERBOSE.value)


def fail(message: str, code: int = 2) -> None:
  print(f"jtl: error: {message}", file=sys.stderr)
  sys.exit(code)


class Terminated(Exception):
  """SIGTERM outside a training loop (inside one, runtime.Preemption checkpoints first)."""


def stop_on_sigterm():
  """From here on SIGTERM raises Terminated in the main thread, so that every command ends
  on it as on Ctrl-C: one line and an exit code (stopped). Returns what restore_sigterm
  needs to put the previous handler back."""
  def handle(signum, frame):
    raise Terminated("SIGTERM")
  try:
    return (signal.signal(signal.SIGTERM, handle),)
  except ValueError:   # Not the main thread: signals are not ours to take.
    return None


def restore_sigterm(saved) -> None:
  if saved is not None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if saved[0] is None else saved[0])


def stopped(e: BaseException) -> tuple[str, int] | None:
  """The one line and the exit code a command ends with on Ctrl-C (130) or SIGTERM (143);
  None for any other error.

  >>> stopped(Terminated())[1], stopped(KeyboardInterrupt())[1], stopped(ValueError())
  (143, 130, None)
  """
  runtime = sys.modules.get("jtl.runtime")   # Imported by every run that can be preempted.
  if runtime and isinstance(e, runtime.Preempted):
    return f"jtl: {e}", e.code
  again = ("rerun the same command to go on (a sweep keeps its finished cells, and a run "
           "resumes from its last checkpoint).")
  if isinstance(e, Terminated):
    return f"jtl: terminated (SIGTERM); {again}", 143
  if isinstance(e, KeyboardInterrupt):
    return f"jtl: interrupted; {again}", 130
  return None


def main(argv: list[str] | None = None) -> dict:
  """A config run (or --dry_run, --diagnose, --recommend); Ctrl-C and SIGTERM end it in one
  line with exit 130 / 143, a mistake in one `jtl: error:` sentence with exit 2."""
  argv = sys.argv if argv is None else argv
  saved = stop_on_sigterm()
  try:
    return _main(argv)
  except (KeyboardInterrupt, Terminated) as e:   # Outside the training loop.
    if verbose(argv):
      raise
    line, code = stopped(e)
    print(line, file=sys.stderr)
    sys.exit(code)
  finally:
    restore_sigterm(saved)


def _main(argv: list[str]) -> dict:
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(config_help(argv))
    sys.exit(0)
  config = parse_config(argv)
  if _DRY_RUN.value:
    from jtl import dry_run
    try:
      print(dry_run.describe(config))
    except USER_ERRORS as e:
      if verbose(argv):
        raise
      fail(first_line(e))
    return {}
  if _DIAGNOSE.value or _RECOMMEND.value:
    return diagnose(config, argv)
  if not _WORKDIR.value:
    fail("--workdir is required: the directory for checkpoints, metrics and the summary.")
  # orbax and grain log every save at INFO, and a failed save's traceback from each writer
  # thread at ERROR; jtl's own progress goes to tqdm and stdout, and the error that ends a
  # run is said once below (all of it with --verbose).
  logging.set_verbosity(logging.WARNING if verbose(argv) else logging.FATAL)
  # A failed save leaves orbax's other write tasks failing too; asyncio logs each at exit.
  py_logging.getLogger("asyncio").setLevel(py_logging.WARNING if verbose(argv)
                                          else py_logging.CRITICAL)
  import jax
  from jtl import distributed, runtime, train  # Late: a bad command line fails fast.
  distributed.initialize()
  runtime.enable_compilation_cache()
  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  except runtime.Preempted as e:
    print(f"jtl: {e}", file=sys.stderr)
    sys.exit(e.code)
  except KeyboardInterrupt:   # A second Ctrl-C, or one before training started.
    if verbose(argv):
      raise
    print("jtl: interrupted; rerun the same command to resume from the last checkpoint.",
          file=sys.stderr)
    sys.exit(130)
  except FloatingPointError as e:
    fail(str(e), code=1)
  except USER_ERRORS as e:
    if verbose(argv):
      raise
    fail(os_error(e, _WORKDIR.value) if isinstance(e, OSError)
         and not isinstance(e, FileNotFoundError) else first_line(e))
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2))
  return summary


def diagnose(config, argv) -> dict:
  """--diagnose (`jtl diagnose`) and --recommend (`jtl recommend`): print, optionally write
  JSON, exit."""
  logging.set_verbosity(logging.WARNING if verbose(argv) else logging.FATAL)
  from jtl import runtime
  runtime.enable_compilation_cache()
  try:
    if _RECOMMEND.value:
      from jtl.diagnose import recommend
      result = recommend.recommend(config)
      print(recommend.describe(result))
    else:
      from jtl.diagnose import estimate
      sources = [s for s in dict.fromkeys([config.init, *_SOURCES.value, "random"]) if s]
      rows = estimate.estimate(config, sources, _LAYERS.value or estimate.LAYERS)
      print(estimate.table(rows))
      result = {"rows": rows}
  except USER_ERRORS as e:
    if verbose(argv):
      raise
    fail(first_line(e))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2, default=str)
    print(f"wrote {_OUT.value}")
  return result


def os_error(e: OSError, workdir: str | None = None) -> str:
  """"cannot use runs/x: Permission denied" rather than errno soup; `workdir` names the
  place when the error has no file name (a write that fails after its file was opened)."""
  what = {17: "is a file, not a folder", 20: "is a file, not a folder"}.get(e.errno, e.strerror)
  if e.errno == 28:
    what = "no space left on device"
  return (f"cannot use {e.filename or workdir}: {what or e}; choose another --workdir or free "
          "the space.")


def config_help(argv: list[str]) -> str:
  """The config's docstring, arguments with defaults and fields, for `CONFIG --help`."""
  spec, _ = _config_spec(argv)
  if not spec:
    return __doc__
  module, config = load(spec, argv)
  lines = [(module.__doc__ or "").strip(), ""]
  args = getattr(module, "ARGS", None)   # The config's own declaration (configs/*.py).
  if args:
    text = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in args.items())
    lines += ["Arguments (CONFIG:k=v,k2=v2), with defaults:",
              textwrap.fill(text, 90, initial_indent="  ", subsequent_indent="  "), ""]
  lines += ["Fields (--config.FIELD=VALUE), with values:"]
  lines += [f"  {k} = {v!r}" for k, v in sorted(config.to_dict().items()) if not isinstance(v, dict)]
  for k, v in sorted(config.to_dict().items()):
    if isinstance(v, dict):
      lines += [f"  {k}.{kk} = {vv!r}" for kk, vv in sorted(v.items())]
  lines += ["", "Flags: --workdir DIR (required), --dry_run (the splits per class, what the strategy trains), --verbose."]
  return "\n".join(lines)


def parse_config(argv: list[str]):
  """Loads --config=PATH[:ARGS] and parses the other flags, --config.FIELD=VALUE overrides
  included; any problem with the config becomes one sentence and exit code 2."""
  spec, rest = _config_spec(argv)
  if not spec:
    fail("--config is required, e.g. --config=configs/transfer.py:strategy=linear_probe.")
  _, config = load(spec, argv)
  try:
    flags.FLAGS.unparse_flags()   # An earlier main() in this process left its values.
    for name in [n for n in flags.FLAGS if n == "config" or n.startswith("config.")]:
      delattr(flags.FLAGS, name)   # Left by an earlier main() in this process.
    holder = config_flags.DEFINE_config_dict("config", config, f"The config of {spec}.",
                                             sys_argv=rest)
    flags.FLAGS(rest)
    config = holder.value
    config.lock()  # A field set later that the config never declared fails too.
    return config
  except SystemExit:
    raise
  except Exception as e:  # ml_collections and absl raise many types; say one thing.
    if verbose(argv):
      raise
    fail(_config_error(e))


def _config_spec(argv: list[str]) -> tuple[str | None, list[str]]:
  """The value of --config=SPEC (or --config SPEC), and argv without it."""
  spec, rest, args = None, [], iter(argv)
  for arg in args:
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config":
      spec = next(args, None)
    else:
      rest.append(arg)
  return spec, rest


def load(spec: str, argv=()):
  """The config file's module and its `get_config(ARGS)` (jtl/config.py); a missing file
  or refused arguments become one sentence and exit code 2."""
  path, _, arg = spec.partition(":")
  try:
    module = load_module(path)
    return module, module.get_config(arg or None)
  except FileNotFoundError as e:
    if verbose(argv):
      raise
    fail(first_line(e))
  except Exception as e:   # The config file's own error, e.g. an unknown argument.
    if verbose(argv):
      raise
    fail(f"the config file refused its arguments: {first_line(e)}")


def _message(e: BaseException) -> str:
  return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # No KeyError quotes.


def _config_error(e: BaseException) -> str:
  text = _message(e)
  if isinstance(e, (KeyError, AttributeError)):
    # ml_collections nests the KeyError's repr, so pick the names out of the text.
    guess = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if guess:
      return f"unknown config field {guess[2]!r} (did you mean {guess[1]!r}?)."
    field = re.search(r"[A-Za-z_][\w.]*", text)
    return f"unknown config field {field[0] if field else text!r}."
  line = first_line(e)   # e.g. absl's "Unknown command line flag 'bogus'"
  return line if line.endswith((".", "?")) else line + "."


if __name__ == "__main__":
  main()
