"""The command line fails on bad input with one sentence and exit code 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, workdir):
  return subprocess.run([sys.executable, "-m", "jtl.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--config=configs/source.py", "--config.optim.lrr=0.1"],
     "unknown config field 'lrr' (did you mean 'lr'?)"),
    (["--config=configs/source.py:modle=resnet18"], "unknown config argument 'modle'"),
    (["--config=configs/source.py:dataset=no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["--config=configs/no_such_config.py"], "config file configs/no_such_config.py does not exist"),
    (["--config=configs/transfer.py", "--config.optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
    (["--config=configs/transfer.py:shots=-3"], "data.shots=-3 must be > 0"),
    (["--config=configs/transfer.py:steps=-5"], "total_steps=-5 must be > 0"),
    (["--config=configs/transfer.py:small_stem=maybe"], "small_stem='maybe' must be true or false"),
    (["--config=configs/transfer.py", "--config.data.eval_batch_size=0"],
     "data.eval_batch_size=0 must be > 0"),
])
def test_bad_input_fails_with_one_sentence(args, expected, tmp_path):
  tmp_path = tmp_path / "run"
  result = run_main(*args, workdir=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("jtl: error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not tmp_path.exists()   # Refused before any work.


TINY = ["--config=configs/tiny.py"]


@pytest.mark.slow
def test_a_workdir_that_is_a_file_fails_with_one_sentence(tmp_path):
  (tmp_path / "file").write_text("x")
  result = run_main(*TINY, workdir=tmp_path / "file")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  [line] = [l for l in result.stderr.splitlines() if l.startswith("jtl: error:")]
  assert str(tmp_path / "file") in line and "is a file" in line


@pytest.mark.slow
def test_an_eval_batch_that_does_not_divide_over_the_devices_is_refused_before_work(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run([sys.executable, "-m", "jtl.main", *TINY, "--config.data.eval_batch_size=7",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert "data.eval_batch_size=7 must be divisible by the 2 devices" in result.stderr
  assert not (tmp_path / "run").exists()


def test_config_help_shows_docstring_arguments_and_fields(tmp_path):
  result = subprocess.run([sys.executable, "-m", "jtl.main", "--config=configs/transfer.py",
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Transfer run:")
  assert 'shots=10' in result.stdout and "optim.lr = 0.01" in result.stdout


def test_config_help_reads_the_arguments_a_config_declares(tmp_path):
  """`CONFIG --help` lists a config's module-level ARGS, whatever its get_config looks like."""
  (tmp_path / "mine.py").write_text(
      '"""My config."""\nfrom jtl.config import base_config, parse_arg\n'
      'ARGS = dict(depth=3, fast=True)\n'
      'def get_config(arg=None):\n  a = parse_arg(arg, **ARGS)\n  c = base_config()\n'
      '  c.total_steps = a["depth"]\n  return c\n')
  result = subprocess.run([sys.executable, "-m", "jtl.main", f"--config={tmp_path}/mine.py:depth=5",
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "depth=3 fast=true" in result.stdout and "total_steps = 5" in result.stdout


def test_a_config_is_found_from_any_working_directory(tmp_path, monkeypatch):
  from jtl import config
  monkeypatch.chdir(tmp_path)
  assert config.load_config("configs/transfer.py:shots=5,strategy=partial:2").strategy.name == "partial:2"
  with pytest.raises(FileNotFoundError, match="config file configs/nope.py does not exist"):
    config.load_config("configs/nope.py")


COMMANDS = [["train"], ["strategy", "show"], ["diagnose"], ["recommend"], ["predict"], ["convert"],
            ["sweep"], ["report"], ["list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_subcommand_has_its_own_help(command, capsys):
  from jtl import cli
  try:
    code = cli.main([*command, "--help"])
  except SystemExit as e:
    code = e.code
  assert code == 0
  assert capsys.readouterr().out.startswith(f"usage: jtl {' '.join(command)} ")


@pytest.mark.parametrize("argv, expected", [
    ([], None), (["bogus"], "invalid choice: 'bogus'"), (["strategy"], "required: ACTION"),
    (["train"], "CONFIG is required"), (["report"], "required: DIR"),
    (["predict", "x.png"], "required: --checkpoint"), (["list", "extra"], "unrecognized arguments"),
    (["sweep", "s.py", "--workdir"], "--workdir: expected one argument"),
])
def test_a_bad_command_line_fails_with_one_sentence(argv, expected, capsys):
  from jtl import cli
  try:
    code = cli.main(argv)
  except SystemExit as e:
    code = e.code
  assert code == 2
  err = capsys.readouterr().err
  if expected:   # No command at all prints the usage instead.
    assert err.startswith("jtl: error: ") and err.count("\n") == 1 and expected in err, err


def test_a_study_run_as_a_script_takes_jtl_sweeps_flags_in_both_forms():
  from jtl import cli, sweep
  study = sweep.Study("tiny", stages=())
  assert cli.sweep_args([], study=study).workdir == os.path.join("runs", "tiny")
  for argv in (["--workdir", "/tmp/d"], ["--workdir=/tmp/d"]):
    assert cli.sweep_args([*argv, "--print_commands"], study=study).workdir == "/tmp/d"


def test_config_commands_pass_overrides_through_to_config_flags():
  result = subprocess.run([sys.executable, "-m", "jtl.cli", "strategy", "show",
                           "configs/transfer.py:strategy=partial:2", "--config.optim.lr", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "strategy partial:2" in result.stdout and "base lr 0.5" in result.stdout


def test_jtl_list_names_strategies_datasets_models_and_formats():
  from jtl import cli, models, strategy
  text = cli.listing()
  for name in [*strategy.PRESETS, "fashion_mnist", "digits", "folder:PATH", *models.MODELS,
               "hf:PATH", "torchvision:PATH", "bit:PATH", "orbax:PATH"]:
    assert name in text, name


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_130_in_one_line(tmp_path):
  """A first Ctrl-C finishes the step, writes a checkpoint and exits 130; the run resumes."""
  import signal
  import time
  p = subprocess.Popen([sys.executable, "-m", "jtl.main", *TINY, "--config.progress=False",
                        "--config.total_steps=100000",
                        "--config.log_every=5", "--config.checkpoint_every=1000",
                        f"--workdir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and p.poll() is None:   # Wait for training to log.
    metrics = tmp_path / "metrics.jsonl"
    if metrics.exists() and metrics.read_text().count("\n") >= 2:
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err
  assert "Ctrl-C at step" in err and "rerun the same command to resume" in err
  assert (tmp_path / "checkpoints").exists() and any(
      d.isdigit() for d in os.listdir(tmp_path / "checkpoints"))
  # progress=False: one log line per log_every steps, with loss, accuracy, lr and images/s.
  lines = [l for l in out.splitlines() if l.startswith("jtl: step ")]
  assert lines and all(k in lines[0] for k in ("loss", "acc", "lr", "img/s"))
  assert lines[0].startswith("jtl: step 5/100000 ")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_parameters(tmp_path):
  """A real crash: the process gets SIGKILL mid-run; rerunning the command finishes it."""
  import signal
  import time

  import flax.traverse_util as tu
  import numpy as np

  from jtl import checkpoint
  args = [sys.executable, "-m", "jtl.main",
          "--config=configs/tiny.py:steps=400",
          "--config.checkpoint_every=10", "--config.keep_checkpoints=2"]
  run = lambda workdir, **kw: subprocess.Popen([*args, f"--workdir={workdir}"], cwd=ROOT,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
  killed = run(tmp_path / "killed")
  deadline = time.time() + 240
  ckpts = tmp_path / "killed" / "checkpoints"
  while time.time() < deadline and killed.poll() is None:
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
    if steps and max(steps) >= 20:
      killed.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  assert killed.wait(60) == -signal.SIGKILL, "the run ended before it could be killed"
  at_kill = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert 20 <= at_kill < 400

  for workdir in ("killed", "clean"):
    p = run(tmp_path / workdir)
    assert p.wait(600) == 0, p.stderr.read().decode()[-2000:]
  flat = lambda d: tu.flatten_dict(checkpoint.load_model(str(tmp_path / d))[0], sep="/")
  resumed, clean = flat("killed"), flat("clean")
  for k in clean:
    np.testing.assert_array_equal(resumed[k], clean[k], err_msg=k)


def readme_commands() -> list[str]:
  """The `./launch.sh` and `.venv/bin/jtl` lines of README's shell blocks, in order."""
  import re
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
  lines = [l.split("  #")[0].strip() for b in blocks for l in b.splitlines()]
  return [l for l in lines if l.startswith(("./launch.sh ", ".venv/bin/jtl "))]


# Commands too long for a test: the main study and the suite itself (CI runs those), and
# full sweeps (test_sweep.py runs a tiny one through the same code).
LONG = ("./launch.sh test", "./launch.sh experiments/", "./launch.sh sweep experiments/strategy_ablation.py [")


@pytest.mark.slow
def test_readme_commands_work_in_order_or_fail_in_one_sentence(tmp_path):
  """Every README command, in README's order, in a fresh copy of the repo: training
  shortened to 2 steps. Each exits 0, or 2 with one sentence (e.g. a path that
  README leaves for the user to fill in) and no traceback."""
  import shutil
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  clone = tmp_path / "jtl"
  for f in files:
    if os.path.exists(os.path.join(ROOT, f)):
      os.makedirs(clone / os.path.dirname(f), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, f), clone / f)
  os.symlink(os.path.join(ROOT, ".venv"), clone / ".venv")
  commands = [c for c in readme_commands() if not c.startswith(LONG)]
  assert len(commands) >= 8, commands
  short = ["--config.total_steps=2", "--config.eval_every=0", "--config.progress=False",
           "--config.data.eval_batch_size=512"]
  ran = []
  for command in commands:
    args = command.split()
    if any(a.startswith("configs/") for a in args) and "--dry_run" not in args:
      args += short
    result = subprocess.run(args, cwd=clone, capture_output=True, text=True, timeout=600)
    errors = [l for l in result.stderr.splitlines() if l.startswith("jtl: error:")]
    assert "Traceback" not in result.stderr, (command, result.stderr[-3000:])
    assert result.returncode == 0 or (result.returncode == 2 and len(errors) == 1), (
        command, result.returncode, result.stderr[-3000:])
    ran.append((command, result.returncode))
  # The commands that need nothing from outside the repo must succeed.
  ok = {c for c, rc in ran if rc == 0}
  assert "./launch.sh configs/source.py --workdir runs/source" in ok
  assert any(c.startswith("./launch.sh configs/transfer.py:init=runs/source") for c in ok)


def test_a_failed_write_with_no_file_name_names_the_workdir():
  from jtl import main
  # ENOSPC raised by a write to an already open file carries no file name (seen in CI's
  # disk-full fault, which then printed "cannot use None").
  text = main.os_error(OSError(28, "No space left on device"), "runs/x")
  assert text.startswith("cannot use runs/x: no space left on device")
  named = main.os_error(OSError(28, "No space left on device", "runs/x/checkpoints/4"), "runs/x")
  assert named.startswith("cannot use runs/x/checkpoints/4:")
