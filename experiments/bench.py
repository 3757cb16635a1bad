r"""Benchmark: jtl's speed against PyTorch, time to first step, input pipeline, frozen strategies.

  ./launch.sh experiments/bench.py                        # everything: 6 min on 2 idle CPU cores
  ./launch.sh experiments/bench.py --quick --shapes small # a smoke test: 1-2 min
  ./launch.sh experiments/bench.py --parts speed --shapes resnet50 --batches resnet50=16

Parts (--parts, default all):
  speed       train-step and inference images/s of jtl (jit(train.train_step), full fine-tune,
              SGD momentum) and of the same network in PyTorch eager (channels_last, a hand-built
              ResNet with jtl's widths and strides, --torch_threads threads), timed in alternating
              rounds; ratio = jtl/PyTorch. On a busy machine PyTorch's OpenMP threads lose far
              more than XLA's (see the warning it prints): trust ratios from an idle machine.
  first_step  seconds from the start of a run to the end of its first step (summary.json's
              first_step_s), for a fresh compilation cache (cold) and then the same cache (warm).
  pipeline    images/s of jtl.data.train_dataset over Fashion-MNIST at each shape's size, alone
              and feeding the train step, against the step on a batch already on the device.
  frozen      one train step per strategy against the inference forward pass, and optimizer-state
              bytes (experiments/bench_frozen.py is this part alone).
Shapes (--shapes): small = the main study's small-stem ResNet-18 (width 0.25, 28x28x1, batch 128,
5 classes); resnet18 and resnet50 = 224x224x3, batch 32, 1000 classes.

Prints tables and writes WORKDIR/bench.json. Timings are medians over --repeats rounds after one
warm-up; ratios are medians of the per-round ratios, so load from other users of a shared
machine hits both sides of a ratio alike. Compare rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("speed", "first_step", "pipeline", "frozen")
STRATEGIES = ("linear_probe", "partial:3", "surgical:stage4", "bitfit", "full_finetune")
# The main study's transfer run, from a random init (its default source may not exist), 2 steps.
FIRST_STEP_CONFIG = "configs/transfer.py:strategy=scratch,steps=2"


@dataclasses.dataclass(frozen=True)
class Shape:
  model: str
  size: int
  batch: int
  channels: int = 3
  small_stem: bool = False
  width: float = 1.0
  num_classes: int = 1000

  def __str__(self):
    extra = f", small stem, width {self.width:g}" if self.small_stem or self.width != 1 else ""
    return f"{self.model}{extra}, {self.size}x{self.size}x{self.channels}, batch {self.batch}"


SHAPES = {
    "small": Shape("resnet18", 28, 128, channels=1, small_stem=True, width=0.25, num_classes=5),
    "resnet18": Shape("resnet18", 224, 32),
    "resnet50": Shape("resnet50", 224, 32),
}


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------
def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
  """Seconds of each fn, once per round; the order flips every round so neither side
  always runs just after the other. Each fn has been called once before (warm-up)."""
  times = {name: [] for name in fns}
  for r in range(repeats):
    for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      t = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t)
  return times


def paired_ratio(a: list[float], b: list[float]) -> float:
  """Median over rounds of a[i] / b[i]."""
  return statistics.median(x / y for x, y in zip(a, b))


# ---------------------------------------------------------------------------
# jtl side.
# ---------------------------------------------------------------------------
class Jtl:
  """One shape's model, a full fine-tune state, and its compiled train step and forward pass."""

  def __init__(self, shape: Shape):
    import jax
    import numpy as np
    from jtl import models
    from jtl.models import build
    self.shape, self.jax = shape, jax
    self.model = models.get_model(shape.model, num_classes=shape.num_classes,
                                  small_stem=shape.small_stem, width=shape.width)
    self.variables = random_variables(self.model, shape)
    self.batch = jax.device_put(random_batch(shape, np.random.default_rng(0)))
    self.rng = jax.random.key(0)
    self.mean = self.std = (0.5,) * shape.channels
    self.state = make_state(self.model, self.variables, "full_finetune", shape.num_classes,
                            shape.channels)
    self.step = None   # Compiled on first use: the frozen part needs only the forward pass.
    forward = build.forward(self.model, self.mean, self.std)
    t = time.perf_counter()
    self.forward = jax.jit(lambda v, x: forward(v, x, train=False)[0]).lower(
        self.variables, self.batch["image"]).compile()
    self.compile_infer_s = time.perf_counter() - t
    self.params = models.count_params(self.variables["params"])

  def compile_train(self):
    if self.step is None:
      from jtl import train
      t = time.perf_counter()
      # The trainer's step: jit(train_step) with the state donated, so it is stepped in place.
      self.step = self.jax.jit(train.train_step, donate_argnums=0).lower(
          self.state, self.batch, self.rng).compile()
      self.compile_train_s = time.perf_counter() - t

  def train(self, batch=None):
    self.compile_train()
    self.state, metrics = self.step(self.state, self.batch if batch is None else batch, self.rng)
    self.jax.block_until_ready((self.state, metrics))

  def infer(self):
    self.jax.block_until_ready(self.forward(self.variables, self.batch["image"]))


def random_variables(model, shape: Shape) -> dict:
  """Variables shaped as `model.init` makes them, filled by numpy: a jitted init compiles
  one random-number kernel per parameter and takes longer than the step on CPU."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, shape.size, shape.size, shape.channels)))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":   # He-normal over fan-in.
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape).astype(leaf.dtype)
    return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)
  return jax.device_put(jax.tree_util.tree_map_with_path(fill, abstract))


def random_batch(shape: Shape, rng) -> dict:
  return {"image": rng.integers(0, 256, (shape.batch, shape.size, shape.size, shape.channels),
                                dtype="uint8"),
          "label": rng.integers(0, shape.num_classes, shape.batch).astype("int32")}


def make_state(model, variables, strategy_name: str, num_classes: int, channels: int):
  """A TrainState of strategy `strategy_name` with the base config's optimizer (SGD momentum),
  built by the trainer's own create_state, on a copy of `variables` so that donating it
  keeps them."""
  import jax
  import jax.numpy as jnp
  from jtl import strategy, train
  from jtl.config import base_config
  from jtl.models import build
  config = base_config()
  config.total_steps = 100
  config.strategy.name = strategy_name
  variables = jax.tree.map(jnp.copy, {"params": variables["params"],
                                      "batch_stats": variables["batch_stats"]})
  phase = strategy.resolve(config.strategy, variables["params"], config.total_steps).phases[0]
  forward = build.forward(model, (0.5,) * channels, (0.5,) * channels)
  state, _ = train.create_state(config, forward, variables, phase, num_classes=num_classes)
  return state


# ---------------------------------------------------------------------------
# PyTorch side: the same network, eager, channels_last.
# ---------------------------------------------------------------------------
def torch_version() -> str | None:
  try:
    import torch
  except ImportError:
    return None
  return torch.__version__


def torch_resnet(shape: Shape):
  """jtl's ResNet v1.5 in torch.nn: same widths, strides, padding and parameter count
  (so the same FLOPs); weights differ. torchvision is not needed."""
  import torch
  from torch import nn
  from jtl.models import MODELS
  from jtl.models.resnet import BASE_WIDTHS

  def conv_bn(cin, cout, k, stride):
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

  class Block(nn.Module):
    def __init__(self, cin, features, stride, bottleneck):
      super().__init__()
      spec = ([(1, features, 1), (3, features, stride), (1, 4 * features, 1)] if bottleneck
              else [(3, features, stride), (3, features, 1)])
      layers, c = [], cin
      for i, (k, f, s) in enumerate(spec):
        layers += conv_bn(c, f, k, s) + ([nn.ReLU(inplace=True)] if i < len(spec) - 1 else [])
        c = f
      self.body, self.out = nn.Sequential(*layers), c
      self.shortcut = (nn.Sequential(*conv_bn(cin, c, 1, stride)) if stride != 1 or cin != c
                       else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.shortcut(x))

  stage_sizes, bottleneck = MODELS[shape.model]
  widths = [max(1, round(w * shape.width)) for w in BASE_WIDTHS]
  k, s = (3, 1) if shape.small_stem else (7, 2)
  layers = conv_bn(shape.channels, widths[0], k, s) + [nn.ReLU(inplace=True)]
  if not shape.small_stem:
    layers.append(nn.MaxPool2d(3, 2, 1))
  c = widths[0]
  for i, (features, n) in enumerate(zip(widths, stage_sizes)):
    for j in range(n):
      layers.append(Block(c, features, 2 if i > 0 and j == 0 else 1, bottleneck))
      c = layers[-1].out
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, shape.num_classes)]
  return nn.Sequential(*layers)


class Torch:
  """One shape's network in PyTorch eager: an SGD-momentum train step and a forward pass."""

  def __init__(self, shape: Shape, batch: dict, threads: int):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    self.model = torch_resnet(shape).to(memory_format=torch.channels_last)
    self.params = sum(p.numel() for p in self.model.parameters())
    # The base config's optimizer; jtl's decays kernels only, which costs the same.
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # NHWC uint8 seen as NCHW: already channels_last in memory. Normalized in the step, as jtl does.
    self.images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2)
    self.labels = torch.from_numpy(batch["label"]).long()

  def _x(self):
    return (self.images.float() / 255.0 - 0.5) / 0.5

  def train(self):
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    loss = self.torch.nn.functional.cross_entropy(self.model(self._x()), self.labels)
    loss.backward()
    self.opt.step()

  def infer(self):
    self.model.eval()
    with self.torch.inference_mode():
      self.model(self._x())


# ---------------------------------------------------------------------------
# Parts.
# ---------------------------------------------------------------------------
def speed(shape: Shape, jtl: Jtl, repeats: int, torch_threads: int) -> dict:
  """jtl and PyTorch train and inference steps in alternating rounds."""
  import numpy as np
  fns = {"jtl_train": jtl.train, "jtl_infer": jtl.infer}
  tv = torch_version()
  if tv:
    ref = Torch(shape, random_batch(shape, np.random.default_rng(0)), torch_threads)
    if ref.params != jtl.params:
      raise AssertionError(f"{shape}: PyTorch network has {ref.params:,} parameters, "
                           f"jtl's {jtl.params:,}; they must be the same network.")
    fns |= {"torch_train": ref.train, "torch_infer": ref.infer}
  for fn in fns.values():
    fn()  # Warm-up (jtl is compiled already).
  times = interleaved(fns, repeats)
  med = {k: statistics.median(v) for k, v in times.items()}
  out = {"shape": dataclasses.asdict(shape), "params": jtl.params, "torch_threads": torch_threads,
         "rounds_s": times,
         "jtl": {"train_img_s": shape.batch / med["jtl_train"],
                 "infer_img_s": shape.batch / med["jtl_infer"],
                 "train_step_ms": med["jtl_train"] * 1e3, "infer_ms": med["jtl_infer"] * 1e3,
                 "compile_train_s": jtl.compile_train_s, "compile_infer_s": jtl.compile_infer_s},
         "torch": "not installed", "ratio": "not installed"}
  if tv:
    out["torch"] = {"train_img_s": shape.batch / med["torch_train"],
                    "infer_img_s": shape.batch / med["torch_infer"],
                    "train_step_ms": med["torch_train"] * 1e3, "infer_ms": med["torch_infer"] * 1e3}
    # jtl images/s over PyTorch's = PyTorch's time over jtl's, round by round.
    out["ratio"] = {"train": paired_ratio(times["torch_train"], times["jtl_train"]),
                    "infer": paired_ratio(times["torch_infer"], times["jtl_infer"])}
  return out


def first_step() -> dict:
  """Runs the main study's transfer run (2 steps) twice on one fresh compilation cache."""
  cache = tempfile.mkdtemp(prefix="jtl-bench-cache-")
  env = {**os.environ, "JTL_COMPILATION_CACHE": cache}
  out = {"config": FIRST_STEP_CONFIG}
  try:
    for which in ("cold", "warm"):
      workdir = os.path.join(cache, f"run-{which}")   # Inside the cache dir: one rmtree.
      cmd = [sys.executable, "-m", "jtl.main", f"--config={FIRST_STEP_CONFIG}",
             f"--workdir={workdir}", "--config.progress=False"]
      t = time.perf_counter()
      proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
      if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                           + proc.stderr[-2000:])
      with open(os.path.join(workdir, "summary.json")) as f:
        out[which] = {"first_step_s": json.load(f)["first_step_s"],
                      "process_s": time.perf_counter() - t}
      shutil.rmtree(workdir)
    out["cache_bytes"] = sum(os.path.getsize(os.path.join(d, n))
                             for d, _, names in os.walk(cache) for n in names)
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  out["cold_over_warm"] = out["cold"]["first_step_s"] / out["warm"]["first_step_s"]
  return out


def pipeline_speed(shape: Shape, jtl: Jtl, source, quick: bool) -> dict:
  """train_dataset's images/s alone, then feeding the step, against the step on a fixed batch."""
  import jax
  from jtl import data
  it = iter(data.train_dataset(source, batch_size=shape.batch, image_size=shape.size,
                               channels=shape.channels, augment=True, seed=0))
  next(it)  # Starts the reader threads.
  n, t0, least = 0, time.perf_counter(), 0.3 if quick else 5.0
  while n < 3 or time.perf_counter() - t0 < least:
    next(it)
    n += 1
  alone = n * shape.batch / (time.perf_counter() - t0)
  # Fixed and fed steps in alternating rounds; a fed step includes waiting for its batch.
  fns = {"fixed": jtl.train, "fed": lambda: jtl.train(jax.device_put(next(it)))}
  fns["fed"]()
  times = interleaved(fns, 2 if quick else 4)
  step = shape.batch / statistics.median(times["fixed"])
  fed = shape.batch / statistics.median(times["fed"])
  over = paired_ratio(times["fixed"], times["fed"])
  return {"pipeline_img_s": alone, "step_img_s": step, "fed_step_img_s": fed,
          "pipeline_over_step": alone / step, "fed_over_fixed": over,
          "keeps_up": bool(alone >= step and over >= 0.9), "rounds_s": times}


def frozen(shape: Shape, jtl: Jtl, repeats: int, strategies=STRATEGIES) -> dict:
  """One train step per strategy against the inference forward pass, in alternating rounds."""
  import flax.traverse_util as tu
  import jax
  import numpy as np
  from jtl import optim, train
  step = jax.jit(train.train_step, donate_argnums=0)   # One compile per strategy.
  states, fns = {}, {"forward": jtl.infer}
  for name in strategies:
    if name == "full_finetune":   # The speed part's state and compiled step.
      fns[name] = jtl.train
      continue
    states[name] = make_state(jtl.model, jtl.variables, name, shape.num_classes, shape.channels)

    def run(name=name):
      states[name], metrics = step(states[name], jtl.batch, jtl.rng)
      jax.block_until_ready((states[name], metrics))
    fns[name] = run
  for fn in fns.values():
    fn()  # Compile and warm up.
  times = interleaved(fns, repeats)
  t_forward = statistics.median(times["forward"])
  rows = []
  for name in strategies:
    state = jtl.state if name == "full_finetune" else states[name]
    rows.append({"strategy": name, "step_ms": statistics.median(times[name]) * 1e3,
                 "x_forward": paired_ratio(times[name], times["forward"]),
                 "trainable": int(sum(np.size(v) for k, v in tu.flatten_dict(
                     state.params, sep="/").items() if k not in state.frozen)),
                 "opt_state_bytes": optim.state_bytes_per_label(state.opt_state)})
    if "full_finetune" in strategies:
      rows[-1]["x_full"] = paired_ratio(times[name], times["full_finetune"])
  by = {r["strategy"]: r for r in rows}
  checks = {}
  if "linear_probe" in by:
    checks["linear_probe <= 1.15x forward"] = by["linear_probe"]["x_forward"] <= 1.15
  if "partial:3" in by and "x_full" in by["partial:3"]:
    checks["partial:3 <= 0.40x full"] = by["partial:3"]["x_full"] <= 0.40
  return {"model": shape.model, "size": shape.size, "batch": shape.batch, "shape": str(shape),
          "device": str(jax.devices()[0]), "forward_ms": t_forward * 1e3, "rows": rows,
          "checks": checks, "rounds_s": times}


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------
def machine_info() -> dict:
  import flax
  import jax
  from jtl import ops
  cpu = platform.processor() or "unknown"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": jax.devices()[0].platform,
          "device": str(jax.devices()[0]), "jax": jax.__version__, "flax": flax.__version__,
          "torch": torch_version() or "not installed", "python": platform.python_version(),
          # jtl.ops runs CPU convolutions through oneDNN when it could build against it.
          "jtl_conv": "oneDNN (jtl.ops)" if ops.available() else "XLA",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "load_average": list(os.getloadavg()), "git": commit or None}


def _f(x, spec=".1f"):
  return format(x, spec) if isinstance(x, (int, float)) else str(x)


def print_speed(results: dict) -> None:
  print("\n| shape | jtl train img/s | PyTorch train img/s | train jtl/PyTorch | jtl inference img/s "
        "| PyTorch inference img/s | inference jtl/PyTorch | jtl compile train / inference (s) |")
  print("|---|---|---|---|---|---|---|---|")
  for name, r in results.items():
    j, t, q = r["jtl"], r["torch"], r["ratio"]
    t = t if isinstance(t, dict) else {"train_img_s": t, "infer_img_s": t}
    q = q if isinstance(q, dict) else {"train": q, "infer": q}
    print(f"| {name}: {r['shape_str']} | {_f(j['train_img_s'])} | {_f(t['train_img_s'])} | "
          f"{_f(q['train'], '.2f')} | {_f(j['infer_img_s'])} | {_f(t['infer_img_s'])} | "
          f"{_f(q['infer'], '.2f')} | {j['compile_train_s']:.1f} / {j['compile_infer_s']:.1f} |")


def print_frozen(r: dict) -> None:
  print(f"\nfrozen strategies, {r['shape']}: inference forward {r['forward_ms']:.0f} ms")
  print("| strategy | step (ms) | x forward | x full | trainable params | "
        "optimizer state (bytes per label) |")
  print("|---|---|---|---|---|---|")
  for row in r["rows"]:
    state = ", ".join(f"{k}: {v:,}" for k, v in sorted(row["opt_state_bytes"].items()))
    print(f"| {row['strategy']} | {row['step_ms']:.0f} | {row['x_forward']:.2f} | "
          f"{_f(row.get('x_full', '-'), '.2f')} | {row['trainable']:,} | {state} |")
  for check, ok in r["checks"].items():
    print(f"{'PASS' if ok else 'MISS'}: {check}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
  parser.add_argument("--shapes", default=",".join(SHAPES), help=f"some of {', '.join(SHAPES)}")
  parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
  parser.add_argument("--batches", default="", help="per-shape batch sizes, e.g. resnet50=16")
  parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
  parser.add_argument("--frozen_shape", default=None,
                      help="shape of the frozen part (default resnet18 if among --shapes, else "
                           "the first of them)")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                      help="PyTorch's threads (default: every core)")
  parser.add_argument("--workdir", default="runs/bench")
  args = parser.parse_args(argv)
  names, parts = args.shapes.split(","), args.parts.split(",")
  for given, known, what in ((names, SHAPES, "shape"), (parts, PARTS, "part")):
    if unknown := set(given) - set(known):
      parser.error(f"unknown {what}(s) {', '.join(sorted(unknown))}; expected {', '.join(known)}")
  batches = {k: int(v) for k, v in (kv.split("=") for kv in filter(None, args.batches.split(",")))}
  shapes = {n: dataclasses.replace(SHAPES[n], batch=batches.get(n, SHAPES[n].batch)) for n in names}
  repeats = args.repeats or (2 if args.quick else 5)
  started = time.perf_counter()

  result = {"machine": machine_info(),
            "settings": {"quick": args.quick, "repeats": repeats, "parts": parts,
                         "shapes": {n: dataclasses.asdict(s) for n, s in shapes.items()}}}
  m = result["machine"]
  print(f"{m['cpu']}, {m['cores']} cores, {m['device']}, jax {m['jax']} (convolutions: "
        f"{m['jtl_conv']}), torch {m['torch']}, "
        f"{m['date']}, load {m['load_average'][0]:.1f}", flush=True)
  if m["load_average"][0] > 0.5 * m["cores"]:
    # Measured here: with another process on one of 2 cores, PyTorch's OpenMP threads wait
    # for each other at every op and its small-shape step ran 3-10x slower than with 1 thread.
    print(f"warning: load average {m['load_average'][0]:.1f} on {m['cores']} cores at the start: "
          "if other work shares the cores, PyTorch (OpenMP) slows down far more than jtl "
          "does; --torch_threads 1 shows how much.", flush=True)
  for n, s in shapes.items():
    if s.batch != SHAPES[n].batch:
      print(f"note: {n} at batch {s.batch} (default {SHAPES[n].batch}), set by --batches")
  jtls = {}

  def jtl_of(name):
    if name not in jtls:
      jtls[name] = Jtl(shapes[name])
    return jtls[name]

  if "speed" in parts:
    result["speed"] = {}
    for name, shape in shapes.items():
      print(f"speed: {name} ({shape}) ...", flush=True)
      r = speed(shape, jtl_of(name), repeats, args.torch_threads)
      result["speed"][name] = r
      ratio = r["ratio"] if isinstance(r["ratio"], str) else (
          f"train {r['ratio']['train']:.2f}, inference {r['ratio']['infer']:.2f}")
      print(f"  jtl train {r['jtl']['train_img_s']:.1f} img/s, inference "
            f"{r['jtl']['infer_img_s']:.1f} img/s; jtl/PyTorch {ratio}", flush=True)
    print_speed({n: {**r, "shape_str": str(shapes[n])} for n, r in result["speed"].items()})
  if "pipeline" in parts:
    from jtl import data
    source = data.load_source("fashion_mnist", "train")
    result["pipeline"] = {}
    for name, shape in shapes.items():
      print(f"pipeline: {name} ...", flush=True)
      result["pipeline"][name] = pipeline_speed(shape, jtl_of(name), source, args.quick)
    print("\n| shape | pipeline alone img/s | step img/s (batch on device) | step img/s fed by the "
          "pipeline | pipeline / step | fed / on device | keeps up |")
    print("|---|---|---|---|---|---|---|")
    for name, r in result["pipeline"].items():
      print(f"| {name}: {shapes[name]} | {r['pipeline_img_s']:.0f} | {r['step_img_s']:.1f} | "
            f"{r['fed_step_img_s']:.1f} | {r['pipeline_over_step']:.1f} | "
            f"{r['fed_over_fixed']:.2f} | {'yes' if r['keeps_up'] else 'NO'} |")
  if "frozen" in parts:
    name = args.frozen_shape or ("resnet18" if "resnet18" in shapes else names[0])
    shape = shapes.get(name) or SHAPES[name]
    jtls.setdefault(name, Jtl(shape))
    print(f"frozen: {name} ...", flush=True)
    strategies = ("linear_probe", "full_finetune") if args.quick else STRATEGIES
    result["frozen"] = frozen(shape, jtls[name], repeats, strategies)
    print_frozen(result["frozen"])
  jtls.clear()   # Frees the models before the subprocesses start.
  if "first_step" in parts:
    print(f"first_step: {FIRST_STEP_CONFIG}, cold then warm cache ...", flush=True)
    r = result["first_step"] = first_step()
    print(f"\n| time to first step | cold cache | warm cache | cold / warm |\n|---|---|---|---|\n"
          f"| first_step_s (run start to end of step 1) | {r['cold']['first_step_s']:.1f} s | "
          f"{r['warm']['first_step_s']:.1f} s | {r['cold_over_warm']:.1f} |\n"
          f"| whole process (imports, 2 steps, eval) | {r['cold']['process_s']:.1f} s | "
          f"{r['warm']['process_s']:.1f} s | - |")
  result["machine"]["load_average_end"] = list(os.getloadavg())
  result["bench_s"] = time.perf_counter() - started
  os.makedirs(args.workdir, exist_ok=True)
  out = os.path.join(args.workdir, "bench.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nbench took {result['bench_s']:.0f} s; wrote {out}")
  return result


if __name__ == "__main__":
  main()
