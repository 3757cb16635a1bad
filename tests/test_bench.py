"""The benchmark's parts run end to end on their smallest settings and write what they promise."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import bench  # noqa: E402
import bench_lib  # noqa: E402

MACHINE_KEYS = {"cpu", "cores", "jax", "platform", "device_kind", "date", "jtl_conv",
                "load_average", "load_average_end"}


def positive(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def written(tmp_path, out=None):
  """bench.json, checked to be what main returned (when given) and to hold the machine."""
  result = json.loads((tmp_path / "bench.json").read_text())
  if out is not None:
    assert result == json.loads(json.dumps(out))
  assert MACHINE_KEYS <= set(result["machine"]) and result["machine"]["cores"] >= 1
  assert positive(result["bench_s"])
  return result


@pytest.mark.slow
def test_bench_quick_small(tmp_path):
  parts = ["speed", "breakdown", "pipeline", "folder", "frozen"]
  out = bench.main(["--quick", "--shapes", "small", "--batches", "small=16",
                    "--parts", ",".join(parts), "--workdir", str(tmp_path)])
  written(tmp_path, out)
  assert set(parts) <= set(out) and not {"first_step", "prefix"} & set(out)
  assert out["settings"]["parts"] == parts
  assert out["settings"]["shapes"]["small"]["batch"] == 16 and out["settings"]["repeats"] == 2

  speed = out["speed"]["small"]
  assert speed["shape"]["batch"] == 16 and speed["params"] > 0
  assert len(speed["rounds_s"]["jtl_train"]) == 2
  for key in ("train_img_s", "infer_img_s", "compile_train_s", "compile_infer_s"):
    assert positive(speed["jtl"][key]), key
  if bench.torch_version():
    assert positive(speed["torch"]["train_img_s"]) and positive(speed["torch"]["infer_img_s"])
    assert positive(speed["ratio"]["train"]) and positive(speed["ratio"]["infer"])
  else:
    assert speed["torch"] == "not installed"

  parts_of_step = out["breakdown"]["small"]
  for who in ("jtl", "torch") if bench.torch_version() else ("jtl",):
    split = parts_of_step[who]
    assert positive(split["step_ms"]) and positive(split["rest_ms"]), who
    assert split["conv_ms"] + split["batchnorm_ms"] + split["rest_ms"] == pytest.approx(
        split["step_ms"]), who

  folder = out["folder"]
  assert (folder["images"], folder["size"], folder["batch"]) == (64, 224, 32)
  assert positive(folder["jtl_img_s"]) and folder["workers"] >= 1
  if bench.torch_version():
    assert positive(folder["torch_img_s"])
    assert folder["jtl_over_torch"] == folder["jtl_img_s"] / folder["torch_img_s"]

  pipe = out["pipeline"]["small"]
  for key in ("pipeline_img_s", "step_img_s", "fed_step_img_s", "fed_over_fixed"):
    assert positive(pipe[key]), key
  assert isinstance(pipe["keeps_up"], bool)

  frozen = out["frozen"]
  rows = {r["strategy"]: r for r in frozen["rows"]}
  assert set(rows) == {"linear_probe", "full_finetune"} and frozen["model"] == "resnet18"
  assert all(positive(r["step_ms"]) and positive(r["x_forward"]) for r in rows.values())
  assert rows["full_finetune"]["x_full"] == 1.0
  assert list(frozen["checks"]) == ["linear_probe <= 1.15x forward"]
  # A frozen backbone holds no optimizer state: the probe's state is the head's alone.
  assert rows["linear_probe"]["trainable"] == 512 // 4 * 5 + 5   # The head of width 0.25.
  assert rows["linear_probe"]["opt_state_bytes"]["train"] == 4 * rows["linear_probe"]["trainable"]
  assert rows["full_finetune"]["trainable"] == speed["params"]   # Every parameter trains.


@pytest.mark.slow
def test_bench_first_step_tiny(tmp_path):
  # Two runs of the tiny config in fresh processes, the first with an empty compile cache.
  config = "configs/tiny.py:steps=2"
  out = bench.main(["--parts", "first_step", "--first_step_config", config,
                    "--workdir", str(tmp_path)])
  written(tmp_path, out)
  first = out["first_step"]
  assert first["config"] == config and first["cache_bytes"] > 0
  for which in ("cold", "warm"):
    run = first[which]
    assert positive(run["first_step_s"]), which
    # Process start (imports included) to the end of the first step, inside the process's time.
    assert run["first_step_s"] < run["from_process_start_s"] < run["process_s"], which
  assert first["cold_over_warm"] == first["cold"]["first_step_s"] / first["warm"]["first_step_s"]
  assert first["torch"] == "only for the default config"   # PyTorch's side is the default's.


def test_torch_first_step_takes_one_step_on_the_drawn_shots():
  torch = pytest.importorskip("torch")
  from jtl.data.sources import FASHION_MNIST_DIR
  shape = bench_lib.Shape("resnet18", 28, 50, channels=1, small_stem=True, width=0.25,
                          num_classes=5)
  seen = {}
  real_sgd = torch.optim.SGD

  class SGD(real_sgd):   # Records the batch's loss gradient reaching the optimizer.
    def step(self, closure=None):
      seen["grad"] = sum(float(p.grad.abs().sum()) for p in self.param_groups[0]["params"])
      return super().step(closure)

  before = time.time()
  with mock.patch.object(torch.optim, "SGD", SGD):
    at = bench_lib.torch_first_step(shape, bench_lib.resnet_arch("resnet18"), FASHION_MNIST_DIR,
                                    [5, 6, 7, 8, 9], 10, 0.01)
  assert before < at <= time.time() and seen["grad"] > 0


def test_stand_ins_keep_the_step_s_shapes_and_parameters():
  """The breakdown part's stand-ins: a convolution's output shape for every stride and padding
  the ResNets use, and BatchNorm's own variables, so the optimizer's work is unchanged."""
  import jax
  import jax.numpy as jnp
  from jtl import models
  import importlib
  conv_module = importlib.import_module("jtl.ops.conv")
  x = jnp.ones((2, 9, 10, 3))
  for k, stride, pad in ((3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)):
    w = jnp.ones((k, k, 3, 4))
    want = conv_module._xla_conv(x, w, (stride,) * 2, ((pad, pad),) * 2).shape
    assert bench_lib.stand_in_conv(x, w, (stride,) * 2, ((pad, pad),) * 2).shape == want
  shape = bench_lib.SHAPES["small"]
  model = models.get_model(shape.model, num_classes=5, small_stem=True, width=shape.width)
  image = jnp.zeros((1, 28, 28, 1))
  real = jax.eval_shape(model.init, jax.random.key(0), image)
  with mock.patch("jtl.models.resnet.nn.BatchNorm", bench_lib.affine_batchnorm()):
    affine = jax.eval_shape(model.init, jax.random.key(0), image)
  assert jax.tree.map(lambda a: a.shape, affine) == jax.tree.map(lambda a: a.shape, real)


@pytest.mark.slow
def test_bench_prefix_tiny(tmp_path):
  # A source run and three linear probes of 2 steps on 10 shots a class.
  out = bench.main(["--parts", "prefix", "--prefix_epochs", "1", "--prefix_shots", "10",
                    "--prefix_batch", "25", "--prefix_source_steps", "2",
                    "--workdir", str(tmp_path)])
  written(tmp_path, out)
  prefix = out["prefix"]
  assert (prefix["images"], prefix["steps"], prefix["batch"]) == (50, 2, 25)
  assert [(r["run"], r["cache_prefix"]) for r in prefix["rows"]] == [
      ("never", "never"), ("auto", "auto"), ("auto_warm", "auto")]
  never, auto, warm = prefix["rows"]
  assert never["cached_through"] is None and auto["cached_through"] == warm["cached_through"]
  assert auto["cached_through"]   # A linear probe caches its whole backbone.
  assert all(positive(r["end_to_end_s"]) and positive(r["train_loop_s"]) for r in prefix["rows"])
  # The cached activations train the same head as the backbone recomputed every step.
  assert prefix["max_param_difference"] <= 1e-5
  assert never["test_accuracy"] == pytest.approx(auto["test_accuracy"], abs=1e-3)
  assert (tmp_path / "prefix" / "auto_warm").is_dir()


@pytest.mark.slow
def test_bench_conv_and_gpu_dry_run_in_a_fresh_process(tmp_path):
  # A fresh process: XLA_FLAGS must be set before jax starts.
  run = subprocess.run(
      [sys.executable, str(EXPERIMENTS / "bench.py"), "--parts", "conv,gpu", "--dry_run",
       "--gpu_model", "resnet18", "--conv_batch", "2", "--quick", "--workdir", str(tmp_path)],
      cwd=EXPERIMENTS.parent, env=dict(os.environ, JTL_ONEDNN="1"), capture_output=True,
      text=True, timeout=600)
  assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
  out = written(tmp_path)
  assert set(out) & set(bench.PARTS) == {"conv", "gpu"}
  assert out["machine"]["jtl_conv"] == "oneDNN (jtl.ops)"

  conv = out["conv"]
  assert [r["pass"] for r in conv] == ["fwd", "dgrad", "wgrad"] * len(bench.CONV_LAYERS)
  assert {r["layer"]["batch"] for r in conv} == {2}
  for r in conv:
    assert positive(r["xla_ms"]) and positive(r["onednn_ms"]) and positive(r["xla_over_onednn"])
    assert positive(r["torch_ms"]) if bench.torch_version() else r["torch_ms"] == "not installed"
  assert "| 3x3/1, batch 2, 56x56, 64->64 | wgrad |" in run.stdout

  gpu = out["gpu"]
  assert gpu["flags_before_jax"] is True and gpu["dry_run"] is True
  assert set(bench.GPU_XLA_FLAGS) <= set(gpu["xla_flags"].split())
  assert gpu["compute_dtype"] == "bfloat16" and gpu["shape"]["model"] == "resnet18"
  for key in ("synthetic", "pipeline"):
    assert positive(gpu["results"][key]["img_s"]), key
    assert gpu["goals"][key]["met"] is None   # A dry run judges no goal.
  assert positive(gpu["results"]["pipeline"]["host_pipeline_img_s"])
  assert "DRY RUN: not GPU numbers" in run.stdout


def test_torch_resnet_matches_jtl():
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp
  from jtl import models
  for name, shape in bench_lib.SHAPES.items():
    model = models.get_model(shape.model, num_classes=shape.num_classes,
                             small_stem=shape.small_stem, width=shape.width)
    ref = bench_lib.torch_resnet(shape)
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, shape.size, shape.size, shape.channels)))
    assert sum(p.numel() for p in ref.parameters()) == models.count_params(abstract["params"]), name
    if shape.small_stem:   # The forward pass of one: the 224 px ones take seconds.
      assert ref(torch.zeros(2, shape.channels, shape.size, shape.size)).shape == (2, 5)


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "resnet19"], "unknown shape(s) resnet19"),
    (["--parts", "speed,frozn"], "unknown part(s) frozn"),
    (["--parts", "conv"], "JTL_ONEDNN=0"),
])
def test_bench_refuses_before_it_starts(argv, message, monkeypatch, capsys):
  monkeypatch.setenv("JTL_ONEDNN", "0")
  with pytest.raises(SystemExit):
    bench.main(argv)
  assert message in capsys.readouterr().err


def test_pytorch_is_timed_under_both_malloc_settings_and_the_faster_counts(monkeypatch):
  """Huge pages speed PyTorch's step up at one shape and slow it down at another: each round
  times it both ways and keeps the faster, while jtl runs as launch.sh starts it."""
  assert bench_lib.with_hugetlb({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.x=2"}, "0") == {
      "GLIBC_TUNABLES": "glibc.x=2:glibc.malloc.hugetlb=0"}
  assert bench_lib.with_hugetlb({}, "1") == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  seen = []

  def run(cmd, env=None, **kwargs):
    side = json.loads(cmd[-1])["side"]
    tunables = (env or os.environ).get("GLIBC_TUNABLES", "")
    seen.append((side, tunables))
    seconds = 1.0 if side == "jtl" else (2.0 if tunables.endswith("hugetlb=1") else 3.0)
    return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps({"train": seconds}), stderr="")

  monkeypatch.setattr(subprocess, "run", run)
  times = bench_lib.in_processes(bench_lib.SHAPES["small"], {"jtl": ["train"], "torch": ["train"]},
                                 repeats=2, least_s=0.0, threads=2)
  assert times == {"jtl_train": [1.0, 1.0], "torch_train": [2.0, 2.0]}
  torch_runs = [t for side, t in seen if side == "torch"]
  assert sorted(torch_runs) == sorted(["glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=0"] * 2)
