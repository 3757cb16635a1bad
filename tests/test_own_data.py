"""Your own images and checkpoints on the first try (issue 21): a plain folder of class
folders trains as it stands, relative paths mean the caller's directory, narrow Hugging
Face ResNets load, and every entry point ends in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jtl import config as config_lib
from jtl.config import load_config
from jtl.data import base, folder
from jtl.data.folder import FolderSource
from jtl.data.splits import carve_validation, make_splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def photos(root, counts=None):
  """root/<class>/<i>.png, no train/ or test/: a user's own folder (cat 21, dog 12, owl 5)."""
  counts = counts or {"cat": 21, "dog": 12, "owl": 5}
  rng = np.random.default_rng(0)
  for name, n in counts.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, (10, 10, 3), np.uint8)).save(root / name / f"{i}.png")
  return root


# --- 1. a plain folder is a dataset as it stands ------------------------------------

def test_a_flat_folder_gets_a_seeded_stratified_test_carve(tmp_path):
  root = photos(tmp_path / "pets")
  train = FolderSource(root, "train", test_fraction=0.2)
  test = FolderSource(root, "test", test_fraction=0.2)
  assert not set(train.paths) & set(test.paths)
  assert len(train) + len(test) == 38
  # round(0.2 * n) of each class, at least one: 4 cats, 2 dogs, 1 owl.
  assert np.bincount(test.labels).tolist() == [4, 2, 1]
  assert test.class_names == train.class_names == ["cat", "dog", "owl"]
  again = FolderSource(root, "test", test_fraction=0.2)
  assert again.paths == test.paths   # the same images on every run
  assert "7 of its 38 images are the test split" in test.describe_carve()


def test_a_class_carve_does_not_depend_on_the_other_classes(tmp_path):
  root = photos(tmp_path / "pets")
  before = [p for p in FolderSource(root, "test", test_fraction=0.2).paths if "/cat/" in p]
  photos(root, {"emu": 9})
  after = [p for p in FolderSource(root, "test", test_fraction=0.2).paths if "/cat/" in p]
  assert before == after


def test_without_a_test_fraction_a_flat_folder_has_no_test_split(tmp_path):
  root = photos(tmp_path / "pets")
  assert len(FolderSource(root, "train")) == 38
  with pytest.raises(ValueError, match="no train/ and test/ subfolders.*data.test_fraction"):
    FolderSource(root, "test")


def test_a_class_too_small_to_carve_is_named_by_its_folder(tmp_path):
  root = photos(tmp_path / "pets", {"cat": 3, "dog": 1})
  with pytest.raises(ValueError, match="^class 'dog' has 1 example; .*data.test_fraction=0.2"):
    FolderSource(root, "test", test_fraction=0.2)


def test_make_splits_trains_on_a_flat_folder_and_says_so(tmp_path, capsys):
  root = photos(tmp_path / "pets")
  splits = make_splits({"name": f"folder:{root}", "val_fraction": 0.1}, seed=0)
  sizes = {k: np.bincount(v.labels, minlength=3).tolist() for k, v in splits.items()}
  assert sizes == {"train": [15, 9, 3], "val": [2, 1, 1], "test": [4, 2, 1]}
  assert f"folder:{root} has no train/ and test/ subfolders" in capsys.readouterr().out
  path = folder.write_split_file(tmp_path, splits)
  lines = open(path).read().splitlines()
  assert len(lines) == 38 and sum(line.startswith("test\t") for line in lines) == 7


def test_validation_errors_name_the_class_folder(tmp_path):
  root = photos(tmp_path / "pets")
  with pytest.raises(ValueError, match="^class 'cat' has 17 training examples; expected more "
                     "than data.val_per_class=100.*val_fraction"):
    make_splits({"name": f"folder:{root}", "val_per_class": 100}, seed=0)
  with pytest.raises(ValueError, match="class 'b' has 1 training examples"):
    carve_validation(np.array([0, 0, 1]), val_per_class=1, seed=0, class_names=["a", "b"])


def test_classes_out_of_range_names_the_field_and_the_classes(tmp_path):
  root = photos(tmp_path / "pets")
  with pytest.raises(ValueError, match=r"data.classes \[3, 4\] out of range; it has 3 classes "
                     r"\(0='cat', 1='dog', 2='owl'\).*classes=all"):
    make_splits({"name": f"folder:{root}", "classes": [0, 1, 2, 3, 4]}, seed=0)


def test_carve_keeps_one_example_per_class_for_training():
  kept, carved = base.carve(np.array([0, 0, 1, 1, 1]), 0.9, seed=0)
  assert np.bincount(np.array([0, 0, 1, 1, 1])[kept]).tolist() == [1, 1]
  assert sorted(np.concatenate([kept, carved]).tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("spec", ["configs/source.py", "configs/transfer.py"])
def test_configs_default_to_every_class_and_a_val_fraction_on_a_folder(spec):
  folder_config = load_config(f"{spec}:dataset=folder:/anywhere")
  assert folder_config.data.classes is None
  assert (folder_config.data.val_per_class, folder_config.data.val_fraction) == (0, 0.1)
  assert load_config(f"{spec}:dataset=digits").data.classes is None
  main = load_config(spec)   # the main study's dataset keeps its class split and val count
  assert main.data.classes == ((0, 1, 2, 3, 4) if "source" in spec else (5, 6, 7, 8, 9))
  assert main.data.val_per_class == (100 if "source" in spec else 20)
  assert main.data.val_fraction is None


@pytest.mark.parametrize("field, value, match", [
    ("val_fraction", 1.5, "data.val_fraction=1.5 must be between 0 and 1"),
    ("test_fraction", 0.0, "data.test_fraction=0.0 must be between 0 and 1"),
    ("val_fraction", 0.1, "data.val_per_class=100 and data.val_fraction=0.1 both carve"),
])
def test_config_check_refuses_bad_fractions(field, value, match):
  c = load_config("configs/source.py")
  c.data[field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.check(c)


def test_config_argument_val_takes_a_count_or_a_fraction():
  assert load_config("configs/source.py:val=0.25").data.val_fraction == 0.25
  assert load_config("configs/source.py:val=7").data.val_per_class == 7
  with pytest.raises(ValueError, match="config argument val='lots'"):
    load_config("configs/source.py:val=lots")


@pytest.mark.slow
def test_a_flat_folder_trains_end_to_end(tmp_path):
  from jtl import train
  from test_train import tiny_config
  root = photos(tmp_path / "pets")
  c = tiny_config(**{"data.name": f"folder:{root}", "data.classes": None, "total_steps": 2,
                     "data.val_fraction": 0.1})
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["test_examples"] == 7
  assert json.load(open(tmp_path / "run" / "model.json"))["class_names"] == ["cat", "dog", "owl"]
  assert (tmp_path / "run" / folder.SPLIT_FILE).exists()


# --- 2. Ctrl-C during a sweep ends like a single run ---------------------------------

@pytest.mark.parametrize("stop, code, line", [
    ("preempted", 130, "jtl: Ctrl-C at step 12: checkpoint saved in W; rerun the same command"),
    ("sigterm", 143, "jtl: SIGTERM at step 3"),
    ("keyboard", 130, "jtl: interrupted; rerun the same command to go on"),
])
def test_a_sweep_stopped_by_a_signal_says_one_line(monkeypatch, tmp_path, capsys, stop, code, line):
  from jtl import cli, runtime, sweep
  study = sweep.Study("s", [sweep.Stage("t", "configs/tiny.py")])
  errors = {"preempted": runtime.Preempted(
                "Ctrl-C at step 12: checkpoint saved in W; rerun the same command to resume.", 130),
            "sigterm": runtime.Preempted("SIGTERM at step 3: checkpoint saved in W", 143),
            "keyboard": KeyboardInterrupt()}

  def stopped(*args, **kwargs):
    raise errors[stop]
  monkeypatch.setattr(sweep, "run", stopped)
  monkeypatch.setattr(sweep, "load_study", lambda path: study)
  monkeypatch.delenv("JTL_TRACEBACK", raising=False)
  assert cli.main(["sweep", "study.py", "--workdir", str(tmp_path)]) == code
  assert cli.run_study(study, ["--workdir", str(tmp_path)]) == code
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and all(e.startswith(line) for e in err)
  with pytest.raises(type(errors[stop])):   # --verbose: the traceback
    cli.main(["sweep", "study.py", "--workdir", str(tmp_path), "--verbose"])


@pytest.mark.slow
def test_ctrl_c_in_a_real_sweep_exits_130_without_a_traceback(tmp_path):
  import signal
  import time
  study = tmp_path / "study.py"
  study.write_text("from jtl import sweep\nSTUDY = sweep.Study('s', [sweep.Stage('t', "
                   "'configs/tiny.py:steps=100000', fixed={'log_every': 1, "
                   "'checkpoint_every': 100000}, grid=sweep.seeds(2))])\n")
  p = subprocess.Popen([sys.executable, "-m", "jtl.cli", "sweep", "study.py", "--workdir", "runs/s"],
                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "runs" / "s" / "t" / "seed=0" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and p.poll() is None:
    if metrics.exists() and metrics.read_text().count("\n") >= 2:
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err and "Preempted" not in err
  assert "jtl: Ctrl-C at step" in err


# --- 3. a relative path means the caller's directory ----------------------------------

@pytest.mark.slow
def test_launch_sh_from_another_directory_reads_the_callers_relative_paths(tmp_path):
  """Your own folder -> source -> transfer -> predict, typed in the folder's directory."""
  photos(tmp_path / "pets")
  small = ["--config.total_steps=2", "--config.eval_every=0", "--config.progress=False",
           "--config.data.batch_size=8", "--config.optim.warmup_steps=0"]
  launch = os.path.join(REPO, "launch.sh")

  def run(*args):
    result = subprocess.run(["bash", launch, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result
  source = run("configs/source.py:dataset=folder:pets,size=16", *small, "--workdir", "runs/src")
  assert "has no train/ and test/ subfolders: 7 of its 38 images" in source.stdout
  assert (tmp_path / "runs" / "src" / "summary.json").exists()   # not the repository's runs/
  assert not os.path.exists(os.path.join(REPO, "runs", "src", "folder_split.txt")) or \
      os.path.getmtime(os.path.join(REPO, "runs", "src", "folder_split.txt")) < \
      os.path.getmtime(tmp_path / "runs" / "src" / "summary.json")
  run("configs/transfer.py:init=runs/src,model=auto,dataset=folder:pets,size=16,shots=3",
      *small, "--workdir", "runs/tgt")
  assert json.load(open(tmp_path / "runs" / "tgt" / "model.json"))["class_names"] == \
      ["cat", "dog", "owl"]
  jtl = os.path.join(REPO, ".venv", "bin", "jtl")
  out = subprocess.run([jtl, "predict", "--checkpoint", "runs/tgt", "pets/cat/0.png"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("pets/cat/0.png\n")
  assert "Metadata file does not exist" not in out.stderr   # 6: library noise stays hidden


def test_the_repositorys_own_study_files_are_found_from_anywhere(tmp_path, monkeypatch):
  from jtl import sweep
  monkeypatch.chdir(tmp_path)
  assert sweep.load_study("experiments/seed_transfer.py").name == "seed_transfer"


# --- 5. jtl predict: advice it can take ---------------------------------------------

@pytest.mark.parametrize("name, content, match", [
    ("missing.png", None, r"missing.png: no such file; expected an image file"),
    ("notes.png", b"not an image", r"notes.png: cannot decode this image \(not an image format"),
    ("empty.jpg", b"", r"empty.jpg: cannot decode this image \(an empty file\)"),
])
def test_predict_names_a_missing_or_broken_image_without_training_advice(tmp_path, name,
                                                                         content, match):
  from jtl import predict
  if content is not None:
    (tmp_path / name).write_bytes(content)
  with pytest.raises((FileNotFoundError, ValueError), match=match) as e:
    predict.read_image(str(tmp_path / name))
  assert "skip_corrupt" not in str(e.value)


# --- 6. quiet by default ----------------------------------------------------------------

def test_progress_bars_only_on_a_terminal(monkeypatch):
  import io

  from jtl import runtime

  class Terminal(io.StringIO):
    def isatty(self):
      return True
  c = load_config("configs/tiny.py")
  c.progress = True
  monkeypatch.setattr(sys, "stderr", io.StringIO())
  assert not runtime.show_progress(c)
  monkeypatch.setattr(sys, "stderr", Terminal())
  assert runtime.show_progress(c)


def test_launch_sh_filters_gloo_and_logs_pip():
  text = open(os.path.join(REPO, "launch.sh")).read()
  quiet = subprocess.run(["bash", "-c", text.split("\nquiet_gloo() ")[1].split("\n")[0].join(
      ["quiet_gloo() ", "\nquiet_gloo"])], input="[Gloo] Rank 0 is connected to 1 peer ranks. "
      "Expected number of connected peer ranks is : 1\njtl: step 1\n", capture_output=True,
      text=True)
  assert quiet.stdout == "jtl: step 1\n"
  assert 'step .venv/bin/python -m pip install -q -e ".[test]"' in text


# --- 7. smaller things ----------------------------------------------------------------

def test_print_commands_with_every_cell_finished_says_so(monkeypatch, tmp_path, capsys):
  import types

  from jtl import sweep
  done = types.SimpleNamespace(finished=True, pending=False)
  monkeypatch.setattr(sweep, "validate", lambda study, root: [(done, None), (done, None)])
  sweep.run(sweep.Study("s", [sweep.Stage("t", "configs/tiny.py")]), str(tmp_path),
            print_commands=True)
  assert capsys.readouterr().out == (f"# all 2 cells of study s are finished in {tmp_path}; "
                                     "nothing to run.\n")


def test_jtl_sweep_takes_verbose():
  from jtl import cli
  assert cli.sweep_args(["x.py", "--verbose"]).verbose


def test_report_intervals_stay_within_0_and_100():
  from jtl.report import markdown
  assert markdown.ci(0.633, 0.210, 1.057) == "63.3 ± 42.4 [21.0, 100.0]"
  assert markdown.ci(0.05, -0.02, 0.12) == "5.0 ± 7.0 [0.0, 12.0]"


def test_recommend_does_not_give_a_standard_error_at_100_percent():
  from jtl.diagnose import recommend
  from test_diagnose import _signals
  _, _, why = recommend.choose(_signals([1.0] * len(recommend.CUTS),
                                        [0.5] * len(recommend.CUTS), 20))
  assert "s.e." not in why[0] and "100.0%" in why[0] and "true error is below" in why[0]
  _, _, why = recommend.choose(_signals([0.8] * len(recommend.CUTS),
                                        [0.5] * len(recommend.CUTS), 20))
  assert "s.e." in why[0]


@pytest.mark.parametrize("argv", [["report", "/no/such/dir"], ["convert", "/no/such", "/tmp/x"],
                                  ["predict", "--checkpoint", "/no/such", "x.png"]])
def test_verbose_is_taken_everywhere_and_shows_the_traceback(argv, capsys):
  from jtl import cli
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
  with pytest.raises((ValueError, FileNotFoundError)):
    cli.main([*argv, "--verbose"])


def test_ctrl_c_in_any_subcommand_is_one_line_and_130(monkeypatch, capsys):
  from jtl import cli, report
  monkeypatch.delenv("JTL_TRACEBACK", raising=False)

  def interrupted(*args):
    raise KeyboardInterrupt
  monkeypatch.setattr(report, "write_report", interrupted)
  assert cli.main(["report", "somewhere"]) == 130
  assert capsys.readouterr().err.startswith("jtl: interrupted;")


# --- 4. a Hugging Face ResNet of any widths trains with model=auto -------------------------

ODD = {"model": {"name": "resnet", "stage_sizes": [1, 2, 1, 1], "bottleneck": True,
                 "stem_width": 12, "stage_widths": [24, 40, 64, 100], "small_stem": False,
                 "width": 1.0}}


def test_model_auto_builds_a_checkpoints_own_widths_and_depths():
  from jtl.models import build
  c = load_config("configs/tiny.py")
  c.model.name, c.data.channels = "auto", 3
  built = build.build(c, ODD, num_classes=3, abstract=True)
  p = built.variables["params"]
  assert p["stem"]["conv"]["kernel"].shape == (7, 7, 3, 12)
  assert len(p["stage2"]) == 2 and len(p["stage3"]) == 1
  assert p["stage4"]["block0"]["conv1"]["kernel"].shape[-1] == 25   # 100 // 4, as in HF
  assert p["stage4"]["block0"]["conv3"]["kernel"].shape[-1] == 100
  assert built.arch["stage_widths"] == [24, 40, 64, 100]   # written to model.json as is
  c.model.name = "resnet18"
  with pytest.raises(ValueError, match="holds a ResNet of its own widths or depths.*model=auto"):
    build.build(c, ODD, num_classes=3, abstract=True)


# --- 8. finishing issue 21: the dry run's splits, size=auto, one ending everywhere --------

def test_dry_run_prints_the_split_sizes_per_class_with_names(tmp_path, capsys):
  from jtl import main
  root = photos(tmp_path / "pets")
  main.main(["jtl", f"--config=configs/transfer.py:dataset=folder:{root},shots=3,steps=5",
             "--dry_run"])
  out = capsys.readouterr().out
  # carved as in test_make_splits_trains_on_a_flat_folder_and_says_so, then 3 shots
  assert "data folder:" in out and ", 10 px, 3 channel(s): train 9 (3 shots per class) / " \
      "val 4 / test 7 images" in out
  rows = [line.split() for line in out.splitlines() if line.startswith("  ") and "'" in line]
  assert rows == [["0", "'cat'", "3", "2", "4"], ["1", "'dog'", "3", "1", "2"],
                  ["2", "'owl'", "3", "1", "1"]]
  # 5 steps and transfer.py's 10 warmup steps: the lr never reaches its peak, and it says so
  assert "warning: config field optim.warmup_steps=10 is more than total_steps=5" in out


def test_warmup_longer_than_the_run_is_named_with_both_fields():
  c = load_config("configs/tiny.py")
  c.total_steps, c.optim.warmup_steps = 20, 50
  [doubt] = config_lib.doubts(c)
  assert "optim.warmup_steps=50 is more than total_steps=20" in doubt and "ends at 0.04" in doubt
  c.optim.warmup_steps = 20
  assert config_lib.doubts(c) == []


@pytest.mark.parametrize("spec", ["configs/source.py:steps=150", "configs/transfer.py:shots=5",
                                  "configs/transfer.py:dataset=digits,classes=all"])
def test_size_auto_keeps_the_shipped_datasets_as_they_ran(spec):
  auto, told = load_config(spec), load_config(f"{spec},size=28,channels=3")
  assert (auto.data.image_size, auto.data.channels) == (28, 3)
  assert auto.to_json() == told.to_json()


def test_size_auto_reads_a_folders_typical_image_size_and_colour(tmp_path):
  def folder(name, size, mode):
    for c in ("a", "b"):
      (tmp_path / name / c).mkdir(parents=True)
      for i, s in enumerate(size):
        Image.new(mode, s).save(tmp_path / name / c / f"{i}.png")
    return f"folder:{tmp_path / name}"
  small = folder("small", [(10, 12), (14, 16), (40, 40)], "RGB")   # shorter sides 10, 14, 40
  large = folder("large", [(640, 480)], "RGB")
  gray = folder("gray", [(32, 32)], "L")
  for spec in ("configs/source.py", "configs/transfer.py:init=,strategy=scratch"):
    sep = "," if ":" in spec else ":"
    shape = lambda dataset, more="": (lambda c: (c.data.image_size, c.data.channels))(
        load_config(f"{spec}{sep}dataset={dataset}{more}"))
    assert shape(small) == (14, 3)
    assert shape(large) == (224, 3)
    assert shape(gray) == (32, 1)
    assert shape(gray, ",size=64,channels=3") == (64, 3)   # told: as told
    assert shape("cifar10") == (224, 3)                    # a TFDS name: nothing is read
    assert shape(f"{tmp_path}/missing") == (224, 3)        # the run names what is missing


def test_transfer_takes_the_checkpoints_channels(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "model.json").write_text(json.dumps({"data": {"channels": 1}}))
  c = load_config(f"configs/transfer.py:init={tmp_path / 'src'}")
  assert (c.data.image_size, c.data.channels) == (28, 1)


@pytest.mark.parametrize("arg, match", [("size=0", "size='0' must be a positive number"),
                                        ("channels=2", "channels='2' must be 1 or 3")])
def test_bad_size_or_channels_are_refused_by_name(arg, match):
  with pytest.raises(ValueError, match=match):
    load_config(f"configs/source.py:{arg}")


ENTRY_POINTS = {   # argv, and the function each one's work goes through
    "sweep": (["sweep", "study.py"], "jtl.sweep", "run"),
    "report": (["report", "somewhere"], "jtl.report", "write_report"),
    "diagnose": (["diagnose", "configs/tiny.py"], "jtl.diagnose.estimate", "estimate"),
    "recommend": (["recommend", "configs/tiny.py"], "jtl.diagnose.recommend", "recommend"),
    "predict": (["predict", "--checkpoint", "somewhere", "x.png"], "jtl.predict", "describe"),
    "convert": (["convert", "a", "b"], "jtl.convert", "convert"),
    "adapt": (["adapt", "a", "--target", "digits", "--workdir", "b"], "jtl.adabn",
              "adapt_checkpoint"),
}


@pytest.mark.parametrize("stop, code, line", [
    ("ctrl-c", 130, "jtl: interrupted; rerun the same command"),
    ("sigterm", 143, "jtl: terminated (SIGTERM); rerun the same command"),
    ("mistake", 2, "jtl: error: no such thing; expected another."),
])
@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_every_entry_point_ends_in_one_line(monkeypatch, capsys, command, stop, code, line):
  import importlib
  import signal
  import time

  from jtl import cli, main, sweep
  argv, module, name = ENTRY_POINTS[command]
  before = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(sweep, "load_study", lambda path: sweep.Study(
      "s", [sweep.Stage("t", "configs/tiny.py")]))
  monkeypatch.delenv("JTL_TRACEBACK", raising=False)

  def work(*args, **kwargs):
    if stop == "ctrl-c":
      raise KeyboardInterrupt
    if stop == "mistake":
      raise ValueError("no such thing; expected another.")
    assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM would kill the process"
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    raise AssertionError("SIGTERM did not stop the command")
  monkeypatch.setattr(importlib.import_module(module), name, work)

  def run(args):
    try:
      return cli.main(args)
    except SystemExit as e:
      return e.code
  assert run(argv) == code
  err = capsys.readouterr().err
  said = [l for l in err.splitlines() if l.startswith("jtl:")]
  assert len(said) == 1 and said[0].startswith(line) and "Traceback" not in err, err
  assert signal.getsignal(signal.SIGTERM) == before   # put back afterwards
  raised = {"ctrl-c": KeyboardInterrupt, "sigterm": main.Terminated, "mistake": ValueError}
  with pytest.raises(raised[stop]):   # --verbose: the error itself, with its traceback
    cli.main([*argv, "--verbose"])


def test_model_auto_records_the_model_that_ran_in_config_json(tmp_path):
  from jtl import train, workdir
  c = load_config("configs/transfer.py:model=auto")
  c.lock()
  ran = train.as_built(c, {"name": "resnet18", "small_stem": False, "width": 1.0})
  assert (ran.model.name, ran.model.small_stem, ran.model.width) == ("auto", False, 1.0)
  assert (c.model.small_stem, c.model.width) == (True, 0.25)   # the caller's config untouched
  (tmp_path / "config.json").write_text(ran.to_json_best_effort())
  assert workdir.config_changes(str(tmp_path), train.as_built(c, {"small_stem": False,
                                                                  "width": 1.0})) == []
  assert train.as_built(load_config("configs/source.py"), {"width": 1.0}).model.width == 0.25


@pytest.mark.slow
def test_a_model_auto_run_writes_the_checkpoints_model_to_config_json(tmp_path, source_run):
  from jtl import train
  from test_train import tiny_config
  c = tiny_config(**{"model.name": "auto", "init": source_run, "model.width": 1.0,
                     "model.small_stem": False, "total_steps": 1})
  train.train_and_evaluate(c, str(tmp_path))
  model = json.load(open(tmp_path / "model.json"))["model"]
  written = json.load(open(tmp_path / "config.json"))["model"]
  assert (written["small_stem"], written["width"]) == (model["small_stem"], model["width"]) \
      == (True, 0.125)
  train.train_and_evaluate(c, str(tmp_path))   # the same command resumes (finishes) as before


def test_provenance_shows_the_command_as_typed(monkeypatch):
  from jtl import sweep
  monkeypatch.delenv("JTL_COMMAND", raising=False)
  assert sweep.typed_command([os.path.join(REPO, "jtl", "cli.py"), "sweep", "x.py"]) == \
      "jtl sweep x.py"
  assert sweep.typed_command([os.path.join(REPO, ".venv", "bin", "jtl"), "sweep", "a b.py"]) == \
      "jtl sweep 'a b.py'"
  assert sweep.typed_command(["experiments/x.py", "--workdir", "w"]) == \
      "experiments/x.py --workdir w"
  text = open(os.path.join(REPO, "launch.sh")).read()
  [export] = [l for l in text.splitlines() if l.startswith("export JTL_COMMAND=")]
  typed = subprocess.run(["bash", "-c", export + '; printf %s "$JTL_COMMAND"', "./launch.sh",
                          "sweep", "experiments/a b.py"], capture_output=True, text=True).stdout
  monkeypatch.setenv("JTL_COMMAND", typed)
  assert sweep.typed_command(["whatever"]) == r"./launch.sh sweep experiments/a\ b.py"


@pytest.mark.parametrize("value, shown", [("'abc", "\"'abc\""), ("abc'", "\"abc'\""),
                                          ("'abc'", "\"'abc'\"")])
def test_a_quoted_float_keeps_its_quotes_in_the_error(value, shown, capsys):
  from jtl import main
  with pytest.raises(SystemExit) as e:
    main.main(["jtl", "--config=configs/tiny.py", f"--config.optim.lr={value}", "--dry_run"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and f"could not convert string to float: {shown}." in err, err


def test_the_accuracy_plot_is_in_percent_like_the_table():
  from jtl.report import plots, stats
  plt = plots._pyplot()
  rows = [{"strategy": "a", "seed": s, "test_accuracy": t, "val_accuracy": 0.5}
          for s, t in enumerate([1.0, 1.0, 0.9])]
  spec = {"by": [], "compare": "strategy"}
  fig, ax = plt.subplots()
  plots._per_value(ax, rows, spec, stats.select(rows, spec), ["a"])
  assert ax.lines[0].get_ydata()[0] == pytest.approx(96.667, abs=1e-3)
  (_, lo), (_, hi) = ax.collections[0].get_segments()[0]
  assert hi == pytest.approx(100) and 0 < lo < 96.667   # the interval stops at 100 %
  plt.close(fig)


# --- 9. README's first run, exactly as written, from the folder's own directory ---------

def readme_first_run() -> list[str]:
  """The commands of README's "Your own images" section, in order."""
  import re
  text = open(os.path.join(REPO, "README.md")).read()
  section = text.split("### Your own images")[1].split("\n#")[0]
  [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
  return [l.split("  #")[0].split(" # ")[0].strip() for l in block.splitlines() if l.strip()]


@pytest.mark.slow
def test_readmes_first_run_works_as_written_from_the_users_directory(tmp_path):
  import shlex
  import time
  commands = readme_first_run()
  assert commands[0].startswith("cd ") and len(commands) == 4, commands
  photos(tmp_path / "photos", {"cat": 20, "dog": 20, "owl": 20})
  photos(tmp_path / "rare", {"cat": 10, "dog": 10, "owl": 10})
  took = []
  for command in commands[1:]:
    args = shlex.split(command.replace("/path/to/jtl/", REPO + "/"))
    start = time.time()
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    took.append(round(time.time() - start))
    assert result.returncode == 0, (command, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "jtl: warning" not in result.stdout, command
  for run in ("photos", "rare"):
    assert (tmp_path / "runs" / run / "summary.json").exists()   # here, not in the repository
    assert json.load(open(tmp_path / "runs" / run / "config.json"))["data"]["image_size"] == 10
    assert (tmp_path / "runs" / run / folder.SPLIT_FILE).exists()
  assert json.load(open(tmp_path / "runs" / "rare" / "model.json"))["class_names"] == \
      ["cat", "dog", "owl"]
  assert result.stdout.startswith("rare/owl/1.png\n")
  assert any(name in result.stdout for name in ("cat", "dog", "owl"))
  print("seconds per command:", took)
