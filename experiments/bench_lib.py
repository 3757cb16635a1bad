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


