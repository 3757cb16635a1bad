"""What the parts of experiments/bench.py share: the shapes, timing in alternating rounds, the
network on the jtl side and on the PyTorch side, the machine, and the printed table."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def in_processes(shape: Shape, fns: dict[str, list[str]], repeats: int, least_s: float,
                 threads: int) -> dict[str, list[float]]:
  """Seconds per call of each side's fns ({"jtl": ["train", "infer"], "torch": [...]}), one
  fresh process per side and round (`measure`), the sides' order flipping every round: each
  framework alone in its process, as a user runs it, with its own allocator and threads.
  Measured here: jtl and PyTorch in one process slowed jtl's step up to 2x under huge-page
  malloc, where alone it ran faster. PyTorch runs under both malloc settings each round, and
  the faster counts (TORCH_HUGETLB). Keys "SIDE_FN", one median per round."""
  import json
  import subprocess
  import sys
  times = {f"{side}_{fn}": [] for side, names in fns.items() for fn in names}
  for r in range(repeats):
    for side in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      spec = {"shape": dataclasses.asdict(shape), "side": side, "fns": fns[side],
              "least_s": least_s, "threads": threads}
      runs = []
      for hugetlb in TORCH_HUGETLB if side == "torch" else (None,):
        env = os.environ if hugetlb is None else with_hugetlb(os.environ, hugetlb)
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "measure",
                              json.dumps(spec)], cwd=ROOT, capture_output=True, text=True, env=env)
        if run.returncode:
          raise RuntimeError(f"measuring {side} on {shape} failed:\n{run.stderr[-2000:]}")
        runs.append(json.loads(run.stdout.splitlines()[-1]))
      for fn in fns[side]:
        times[f"{side}_{fn}"].append(min(seconds[fn] for seconds in runs))
  return times


# PyTorch under both of glibc's malloc settings, the faster kept per round: on a 2-core Zen 5
# huge pages (what launch.sh gives jtl) sped its 28 px step up (85-98 against 98-134 ms) and
# slowed its 224 px step down (1.13-1.64 against 1.07-1.44 s). Before 2026-12-07 it ran with
# huge pages only, which flattered jtl at 224 px.
TORCH_HUGETLB = ("1", "0")


def with_hugetlb(environ, value: str) -> dict:
  """`environ` with GLIBC_TUNABLES's glibc.malloc.hugetlb set to `value`, the rest kept."""
  kept = [t for t in environ.get("GLIBC_TUNABLES", "").split(":")
          if t and not t.startswith("glibc.malloc.hugetlb=")]
  return {**environ, "GLIBC_TUNABLES": ":".join([*kept, f"glibc.malloc.hugetlb={value}"])}


def measure(shape: Shape, side: str, fns: list[str], least_s: float, threads: int) -> dict:
  """In a fresh process: the median seconds per call of each of `fns` ("train", "infer", or a
  train step with stand-ins: "no_conv", "no_conv_bn") on `side`, each called once to warm up
  and then until `least_s` seconds have passed (at least 2 calls)."""
  import numpy as np
  stand_ins = {"train": (), "infer": (), "no_conv": ("conv",), "no_conv_bn": ("conv", "bn")}
  if side == "jtl":
    from jtl import runtime
    runtime.enable_compilation_cache()   # Rounds after the first skip most of the compile.
    build = lambda swapped: jtl_with_stand_ins(shape, swapped)
  else:
    batch = random_batch(shape, np.random.default_rng(0))
    build = lambda swapped: Torch(shape, batch, threads, swapped)
  models, calls = {}, {}   # "train" and "infer" share one model.
  for fn in fns:
    if stand_ins[fn] not in models:
      models[stand_ins[fn]] = build(stand_ins[fn])
    calls[fn] = models[stand_ins[fn]].infer if fn == "infer" else models[stand_ins[fn]].train
  out = {}
  for fn, call in calls.items():
    call()
    seconds, started = [], time.perf_counter()
    while len(seconds) < 2 or time.perf_counter() - started < least_s:
      t = time.perf_counter()
      call()
      seconds.append(time.perf_counter() - t)
    out[fn] = statistics.median(seconds)
  return out


def paired_ratio(a: list[float], b: list[float]) -> float:
  """Median over rounds of a[i] / b[i]."""
  return statistics.median(x / y for x, y in zip(a, b))


def timed_steps(step, state, batches, rng, warmup: int, steps: int):
  """Seconds for `steps` steps after `warmup`, blocking only at the ends, as the trainer
  does between log steps (a throughput, where `interleaved` times one call). Returns
  (seconds, state)."""
  import jax
  for _ in range(warmup):
    state, metrics = step(state, next(batches), rng)
  jax.block_until_ready((state, metrics))
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, next(batches), rng)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - t, state


def prefetch_to_device(batches, size: int = 2):
  """Yields the batches of `batches` as device arrays, `size` ahead of the consumer, so the
  host-to-device copy of the next batches overlaps the running step."""
  import jax
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.device_put(batch))
    if len(queue) > size:
      yield queue.popleft()
  yield from queue


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


def stand_in_conv(x, w, strides=(1, 1), padding="SAME"):
  """A convolution's output shape and gradients' paths at the cost of one pass over its input
  and output: the mean of each image times the sum of each filter (the breakdown part)."""
  import importlib

  import jax.numpy as jnp
  conv_module = importlib.import_module("jtl.ops.conv")   # jtl.ops.conv is also the function.
  strides = tuple(int(s) for s in strides)
  shape = conv_module.output_shape(x.shape, w.shape, strides,
                                   conv_module._pairs(x.shape, w.shape, strides, padding))
  y = x.mean((1, 2, 3))[:, None, None, None] * w.sum((0, 1, 2))
  return jnp.broadcast_to(y, shape)


def affine_batchnorm():
  """flax.linen.BatchNorm's parameters and statistics, computing only x * scale + bias:
  BatchNorm without its reductions and normalization (the breakdown part)."""
  from typing import Any

  import flax.linen as nn
  import jax.numpy as jnp

  class Affine(nn.Module):
    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average=None):
      c = x.shape[-1]
      self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
      self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
      scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
      bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
      return x * scale.astype(x.dtype) + bias.astype(x.dtype)

  return Affine


def jtl_with_stand_ins(shape: Shape, stand_ins: tuple) -> Jtl:
  """`Jtl(shape)` traced and compiled with `stand_ins` ("conv", "bn") in place of those layers."""
  import importlib
  from unittest import mock
  conv_module = importlib.import_module("jtl.ops.conv")   # jtl.ops.conv is also the function.
  patches = ([mock.patch.object(conv_module, "conv", stand_in_conv)] if "conv" in stand_ins
             else [])
  if "bn" in stand_ins:
    patches.append(mock.patch("jtl.models.resnet.nn.BatchNorm", affine_batchnorm()))
  for patch in patches:
    patch.start()
  try:
    jtl = Jtl(shape)
    jtl.compile_train()
  finally:
    for patch in patches:
      patch.stop()
  return jtl


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


def jax_conv_passes(op, stride: int, pad: int, x, w, dy) -> dict:
  """The forward, data-gradient and weight-gradient calls of convolution `op`, one jit
  each so that XLA drops what a pass does not need."""
  import jax
  f = lambda x, w: op(x, w, (stride, stride), ((pad, pad), (pad, pad)))
  fwd = jax.jit(f)
  dgrad = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy)[0])
  wgrad = jax.jit(lambda x, w, dy: jax.vjp(f, x, w)[1](dy)[1])
  x, w, dy = jax.device_put((x, w, dy))
  return {"fwd": lambda: jax.block_until_ready(fwd(x, w)),
          "dgrad": lambda: jax.block_until_ready(dgrad(x, w, dy)),
          "wgrad": lambda: jax.block_until_ready(wgrad(x, w, dy))}


# ---------------------------------------------------------------------------
# PyTorch side: the same network, eager, channels_last.
# ---------------------------------------------------------------------------
def torch_version() -> str | None:
  try:
    import torch
  except ImportError:
    return None
  return torch.__version__


def resnet_arch(model: str) -> dict:
  """jtl's stage sizes, block type and base widths of `model`, for `torch_resnet`."""
  from jtl.models import MODELS
  from jtl.models.resnet import BASE_WIDTHS
  stage_sizes, bottleneck = MODELS[model]
  return {"stage_sizes": list(stage_sizes), "bottleneck": bool(bottleneck),
          "base_widths": list(BASE_WIDTHS)}


def torch_resnet(shape: Shape, arch: dict | None = None, stand_ins: tuple = ()):
  """jtl's ResNet v1.5 in torch.nn: same widths, strides, padding and parameter count
  (so the same FLOPs); weights differ. torchvision is not needed. `arch`: `resnet_arch`'s,
  passed in where importing jtl (and so jax) would be unfair to PyTorch's timing.
  `stand_ins`: "conv" and/or "bn" swap those layers for `stand_in_conv` / an affine map, with
  the same parameters (the breakdown part)."""
  import torch
  from torch import nn
  arch = arch or resnet_arch(shape.model)
  stage_sizes, bottleneck = arch["stage_sizes"], arch["bottleneck"]

  class StandInConv(nn.Conv2d):
    def forward(self, x):
      n, _, h, w = x.shape
      out = ((h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1,
             (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1)
      y = x.mean((1, 2, 3)).view(n, 1, 1, 1) * self.weight.sum((1, 2, 3)).view(1, -1, 1, 1)
      return y.expand(n, self.out_channels, *out).contiguous(memory_format=torch.channels_last)

  class Affine(nn.BatchNorm2d):
    def forward(self, x):
      return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

  def conv_bn(cin, cout, k, stride):
    conv = StandInConv if "conv" in stand_ins else nn.Conv2d
    bn = Affine if "bn" in stand_ins else nn.BatchNorm2d
    return [conv(cin, cout, k, stride, k // 2, bias=False), bn(cout)]

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

  widths = [max(1, round(w * shape.width)) for w in arch["base_widths"]]
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

  def __init__(self, shape: Shape, batch: dict, threads: int, stand_ins: tuple = ()):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.torch = torch
    self.model = torch_resnet(shape, stand_ins=stand_ins).to(memory_format=torch.channels_last)
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


def torch_first_step(shape: Shape, arch: dict, idx_dir: str, classes: list[int], shots: int,
                     lr: float, seed: int = 0) -> float:
  """PyTorch's side of bench.py's first_step part, as a fresh process runs it: the transfer
  run's work up to its first step, the PyTorch way. Reads Fashion-MNIST's training idx files,
  draws `shots` images of each of `classes`, pads, crops and flips them as jtl's pipeline
  does, builds the network and takes one SGD step. Returns the Unix time at its end."""
  import gzip

  import numpy as np
  import torch
  torch.manual_seed(seed)
  with gzip.open(os.path.join(idx_dir, "train-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
  with gzip.open(os.path.join(idx_dir, "train-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  rng = np.random.default_rng(seed)
  pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                         for c in classes])
  pad = shape.size // 8
  padded = np.pad(images[pick], ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  x = np.stack([p[dy:dy + shape.size, dx:dx + shape.size][:, ::-1 if flip else 1]
                for p, dy, dx, flip in zip(padded, *rng.integers(0, 2 * pad + 1, (2, len(pick))),
                                           rng.integers(0, 2, len(pick)))])
  y = torch.from_numpy(np.searchsorted(classes, labels[pick])).long()
  model = torch_resnet(shape, arch).to(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
  x = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
  loss = torch.nn.functional.cross_entropy(model(x), y)
  loss.backward()
  opt.step()
  return time.time()


def write_jpeg_folder(root: str, count: int, size: tuple[int, int], classes: int = 4) -> None:
  """`count` photo-like JPEGs (smooth colour fields plus grain, quality 90) of `size` (w, h)
  in `classes` class folders: an ImageFolder / folder: dataset for the pipeline parts."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(count):
    folder = os.path.join(root, f"class{i % classes}")
    os.makedirs(folder, exist_ok=True)
    low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize(size, Image.BICUBIC)
    grain = rng.normal(0, 8, (size[1], size[0], 3))
    image = np.clip(np.asarray(low, np.float32) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


class TorchFolder:
  """torchvision's ImageFolder with Resize((size, size)), RandomCrop(size, padding=size // 8),
  RandomHorizontalFlip and PILToTensor: the same PIL calls that those transforms make, so
  torchvision itself is not needed (PyPI's torchvision does not import beside the CPU wheel
  of torch that the tests pin). A map-style dataset for torch.utils.data.DataLoader."""

  def __init__(self, root: str, size: int):
    self.size, self.pad = size, size // 8
    self.items = sorted((os.path.join(root, c, n), i)
                        for i, c in enumerate(sorted(os.listdir(root)))
                        for n in os.listdir(os.path.join(root, c)))

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    import numpy as np
    import torch
    from PIL import Image, ImageOps
    path, label = self.items[i]
    with open(path, "rb") as f:   # torchvision's pil_loader.
      image = Image.open(f).convert("RGB")
    image = image.resize((self.size, self.size), Image.BILINEAR)
    image = ImageOps.expand(image, self.pad)   # RandomCrop's zero padding, then the crop.
    top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
    image = image.crop((left, top, left + self.size, top + self.size))
    if torch.rand(1).item() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(image).copy()), label


def torch_conv_passes(stride: int, pad: int, x, w, dy, threads: int) -> dict:
  """The same three passes in PyTorch eager, channels-last (oneDNN inside)."""
  import torch
  torch.set_num_threads(threads)
  # NHWC memory seen as NCHW is channels-last already.
  tx, tdy = (torch.from_numpy(a).permute(0, 3, 1, 2) for a in (x, dy))
  tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
  bwd = lambda mask: torch.ops.aten.convolution_backward(
      tdy, tx, tw, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask)
  return {"fwd": lambda: torch.conv2d(tx, tw, None, stride, pad),
          "dgrad": lambda: bwd([True, False, False]),
          "wgrad": lambda: bwd([False, True, False])}


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
          "device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
          "jax": jax.__version__, "flax": flax.__version__,
          "torch": torch_version() or "not installed", "python": platform.python_version(),
          # jtl.ops runs CPU convolutions through oneDNN when it could build against it.
          "jtl_conv": "oneDNN (jtl.ops)" if ops.available() else "XLA",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "load_average": list(os.getloadavg()), "git": commit or None}


def fmt(x, spec=".1f"):
  return format(x, spec) if isinstance(x, (int, float)) else str(x)


def table(header: list, rows: list, title: str = "") -> None:
  """Prints a markdown table, after a blank line and `title`."""
  print(f"\n{title}" if title else "")
  print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(map(str, row)) + " |")




if __name__ == "__main__":   # bench.py starts its fresh processes this way.
  import json
  import sys
  command, spec = sys.argv[1], json.loads(sys.argv[2])
  shape = Shape(**spec.pop("shape"))
  if command == "first_step":
    print(f"first_step_at={torch_first_step(shape, **spec)!r}")
  else:
    print(json.dumps(measure(shape, **spec)))
