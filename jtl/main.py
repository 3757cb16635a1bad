"""Command line: `python -m jtl.main --config configs/transfer.py:ARGS --workdir DIR`.

`launch.sh CONFIG[:ARGS] [--config.field=value …] --workdir DIR` wraps this.
Errors a user can fix (a bad config field, a missing file, a checkpoint that does
not fit) end in one sentence on stderr; set JTL_TRACEBACK=1 for the full trace.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg string].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go.")

USER_ERRORS = (ValueError, FileNotFoundError, KeyError, flags.Error)


def fail(message: str, code: int = 2) -> None:
  print(f"jtl: error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv: list[str] | None = None) -> dict:
  from jtl import train  # Imported after flag parsing so `--help` stays fast.
  argv = sys.argv if argv is None else argv
  try:
    flags.FLAGS(argv)
    config = _CONFIG.value
    config.lock()  # Typos in fields set later in code fail too, not just on the command line.
  except USER_ERRORS as e:
    fail(_one_line(e))
  except Exception as e:  # The config file itself raised (e.g. a bad argument string).
    if os.environ.get("JTL_TRACEBACK"):
      raise
    fail(f"could not load config {flags.FLAGS['config'].serialize()}: {_one_line(e)}")
  if not _WORKDIR.value:
    fail("--workdir is required: the directory for checkpoints, metrics and the summary.")
  # orbax and grain log every save at INFO; jtl's own progress goes to tqdm and stdout.
  logging.set_verbosity(logging.WARNING)
  try:
    summary = train.train_and_evaluate(config, _WORKDIR.value)
  except train.Preempted as e:
    print(f"jtl: {e}", file=sys.stderr)
    sys.exit(143)
  except FloatingPointError as e:
    fail(str(e), code=1)
  except USER_ERRORS as e:
    if os.environ.get("JTL_TRACEBACK"):
      raise
    fail(_one_line(e))
  print(json.dumps(summary, indent=2))
  return summary


def _one_line(e: BaseException) -> str:
  """The first line of an exception's message (KeyError quotes stripped)."""
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  lines = text.strip().splitlines()
  return lines[0] if lines else type(e).__name__


if __name__ == "__main__":
  main()
