"""The `jtl` command.

  jtl train CONFIG[:ARGS] [--config.FIELD=VALUE ...] --workdir DIR
  jtl strategy show CONFIG[:ARGS] [--config.FIELD=VALUE ...]
  jtl predict --checkpoint DIR IMAGE [IMAGE ...]
  jtl convert SRC DST      (SRC: HF folder or hub id, .pth, BiT .npz, jtl workdir; DST: a new workdir)
  jtl sweep STUDY.py [--workdir DIR] [--print_commands]   run a study's grid (experiments/)
  jtl report DIR           RESULTS.md and plots from a sweep's results.jsonl
"""

from __future__ import annotations

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
  if argv[:1] == ["convert"] and len(argv) == 3:
    from jtl import convert
    try:
      meta = convert.convert(argv[1], argv[2])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
      run.fail(run.first_line(e))
    print(f"wrote {argv[2]}: {meta['model']['name']}, {meta['model']['num_classes']} classes, "
          f"{meta['data']['image_size']} px")
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


if __name__ == "__main__":
  main()
