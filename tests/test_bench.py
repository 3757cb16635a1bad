"""The benchmarks run end to end on their smallest settings and write what they promise."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import bench  # noqa: E402
import bench_gpu  # noqa: E402


def positive(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_quick_small(tmp_path):
  # first_step is left out: it runs the trainer twice in subprocesses (~40 s on 2 cores).
  out = bench.main(["--quick", "--shapes", "small", "--batches", "small=16",
                    "--parts", "speed,pipeline,frozen", "--workdir", str(tmp_path)])
  assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(out))
  assert {"cpu", "cores", "jax", "platform", "date", "jtl_conv"} <= set(out["machine"])
  assert set(out) >= {"speed", "pipeline", "frozen"} and "first_step" not in out

  speed = out["speed"]["small"]
  assert speed["shape"]["batch"] == 16 and speed["params"] > 0
  for key in ("train_img_s", "infer_img_s", "compile_train_s", "compile_infer_s"):
    assert positive(speed["jtl"][key]), key
  if bench.torch_version():
    assert positive(speed["torch"]["train_img_s"]) and positive(speed["torch"]["infer_img_s"])
    assert positive(speed["ratio"]["train"]) and positive(speed["ratio"]["infer"])
  else:
    assert speed["torch"] == "not installed"

  pipe = out["pipeline"]["small"]
  for key in ("pipeline_img_s", "step_img_s", "fed_step_img_s", "fed_over_fixed"):
    assert positive(pipe[key]), key
  assert isinstance(pipe["keeps_up"], bool)

  rows = {r["strategy"]: r for r in out["frozen"]["rows"]}
  assert set(rows) == {"linear_probe", "full_finetune"}
  assert all(positive(r["step_ms"]) and positive(r["x_forward"]) for r in rows.values())
  # A frozen backbone holds no optimizer state: the probe's state is the head's alone.
  assert rows["linear_probe"]["trainable"] == 512 // 4 * 5 + 5   # The head of width 0.25.
  assert rows["linear_probe"]["opt_state_bytes"]["train"] == 4 * rows["linear_probe"]["trainable"]


def test_torch_resnet_matches_jtl():
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp
  from jtl import models
  for name, shape in bench.SHAPES.items():
    model = models.get_model(shape.model, num_classes=shape.num_classes,
                             small_stem=shape.small_stem, width=shape.width)
    ref = bench.torch_resnet(shape)
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, shape.size, shape.size, shape.channels)))
    assert sum(p.numel() for p in ref.parameters()) == models.count_params(abstract["params"]), name
    if shape.small_stem:   # The forward pass of one: the 224 px ones take seconds.
      assert ref(torch.zeros(2, shape.channels, shape.size, shape.size)).shape == (2, 5)


def test_bench_unknown_shape_refused():
  with pytest.raises(SystemExit):
    bench.main(["--shapes", "resnet19"])


@pytest.mark.slow
def test_bench_gpu_dry_run(tmp_path):
  out = bench_gpu.main(["--dry_run", "--model", "resnet18", "--workdir", str(tmp_path)])
  assert json.loads((tmp_path / "bench_gpu.json").read_text())["dry_run"] is True
  assert out["settings"]["compute_dtype"] == "bfloat16"
  for key in ("synthetic", "pipeline"):
    assert positive(out["results"][key]["img_s"]), key
    assert out["goals"][key]["met"] is None   # A dry run judges no goal.
  assert positive(out["results"]["pipeline"]["host_pipeline_img_s"])
