r"""jtl's benchmarks in parts: speed, first_step, pipeline, frozen, prefix, conv and gpu.

  ./launch.sh experiments/bench.py                        # default parts: 6 min on 2 idle cores
  ./launch.sh experiments/bench.py --quick --shapes small # a smoke test: 1-2 min
  ./launch.sh experiments/bench.py --parts speed --shapes resnet50 --batches resnet50=16
  ./launch.sh experiments/bench.py --parts frozen --shapes resnet50 --batches resnet50=16
  ./launch.sh experiments/bench.py --parts prefix         # 5 min
  ./launch.sh experiments/bench.py --parts breakdown --shapes small,resnet18   # 3 min
  ./launch.sh experiments/bench.py --parts conv
  ./launch.sh experiments/bench.py --parts gpu            # on a GPU machine; --dry_run on CPU

Parts (--parts, comma-separated). The default is the four that measure jtl on the CPU it runs
on: speed, first_step, pipeline, folder, frozen. breakdown, prefix (5 min of training), conv
(jtl.ops' oneDNN convolutions, on unless JTL_ONEDNN=0) and gpu (needs a GPU) run only when
asked for.
  speed       train-step and inference images/s of jtl (jit(train.train_step), full fine-tune,
              SGD momentum) and of the same network in PyTorch eager (channels_last, a hand-built
              ResNet with jtl's widths and strides, --torch_threads threads), each side in a
              fresh process per round (bench_lib.in_processes: alone, as a user runs it; in one
              process each side's allocator and threads slowed the other), sides alternating;
              PyTorch under both of glibc's malloc settings, the faster kept (huge pages help
              it at 28 px and hurt it at 224 px); ratio = jtl/PyTorch, the median of the
              rounds' ratios. On a busy machine
              PyTorch's OpenMP threads lose far more than XLA's (see the warning it prints):
              trust ratios from an idle machine.
  breakdown   where the train step's time goes, in jtl and PyTorch alike: the step, the step with
              its convolutions swapped for stand-ins that cost one pass over their input and
              output, and the step with BatchNorm also reduced to its affine map; differences
              of medians over alternating rounds give convolutions, BatchNorm and the rest.
  first_step  seconds from the start of a process to the end of its first step, of
              --first_step_config with a fresh compilation cache (cold) and then the same cache
              (warm), and of the same work in PyTorch eager (read Fashion-MNIST, draw the shots,
              build the network, one SGD step: bench_lib.torch_first_step), twice.
  pipeline    images/s of jtl.data.train_dataset over Fashion-MNIST at each shape's size, alone
              and feeding the train step, against the step on a batch already on the device.
  folder      images/s of jtl's folder: pipeline over generated JPEGs (--folder_image, ImageNet's
              typical 500x375): decode, resize to 224, padded random crop, flip, batch 32; and of
              a PyTorch DataLoader over the same files with the same transforms (torchvision's
              ImageFolder + Resize + RandomCrop + RandomHorizontalFlip, as their PIL calls) and
              as many worker processes as jtl has threads.
  frozen      one train step per strategy against the inference forward pass, and optimizer-state
              bytes per label, on --frozen_shape. Targets: linear_probe <= 1.15x the forward
              pass; partial:3 (last stage + head) <= 0.40x the full fine-tune step.
  prefix      the trainer's linear probe, un-augmented, with data.cache_prefix=never (the frozen
              backbone runs every step), auto (its activations computed once) and auto again
              (found in the cache, as by a sweep's next cell). Source: the small shape on
              Fashion-MNIST classes 0-4, --prefix_source_steps steps; target: classes 5-9,
              --prefix_shots per class (0: all 30000 images), --prefix_epochs epochs. Wall time
              end to end and of the training loop, and the largest parameter difference.
  conv        one conv layer's forward, data gradient and weight gradient (CONV_LAYERS at
              --conv_batch): XLA's, jtl.ops' (oneDNN through the XLA FFI) and PyTorch eager's.
  gpu         ResNet-50 (--gpu_model) full fine-tuning on one GPU, set up as JAX's GPU tips
              advise: bfloat16 compute with float32 parameters, NHWC, batch 256 (--gpu_batch),
              224 px, XLA_FLAGS with the latency-hiding scheduler (set before jax starts;
              --xla_flags adds more). synthetic: one random batch on the device, --gpu_steps
              steps after 5 untimed ones; pipeline:
              jtl.data.train_dataset (crop + flip) over random images (--gpu_source synthetic)
              or Fashion-MNIST at 224 px, two batches ahead of the step. Without a GPU, or with
              --dry_run, batch 4 at 32 px for 2 steps: a check of the code, not a GPU number.
Shapes (--shapes): small = the main study's small-stem ResNet-18 (width 0.25, 28x28x1, batch 128,
5 classes); resnet18 and resnet50 = 224x224x3, batch 32, 1000 classes.

Prints a table per part and writes WORKDIR/bench.json: the machine (CPU, cores, device, jax,
date, load), the settings, and each part's results under its name. Timings are medians over
--repeats rounds after one warm-up; ratios are medians of the per-round ratios, so load from
other users of a shared machine hits both sides of a ratio alike. Compare rows of one run, not
runs of different days. What the parts share (shapes, timing, both sides' networks, the machine,
the table) is in experiments/bench_lib.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

# What the parts share, beside this file; none of it imports jax before main sets XLA_FLAGS.
import bench_lib
from bench_lib import (ROOT, SHAPES, Jtl, Shape, TorchFolder, fmt, in_processes, interleaved,
                       jax_conv_passes, machine_info, make_state, paired_ratio, prefetch_to_device,
                       random_batch, random_variables, resnet_arch, table, timed_steps,
                       torch_conv_passes,
                       torch_version, write_jpeg_folder)

# In the order they run; the first three share one model per shape.
PARTS = ("speed", "breakdown", "pipeline", "folder", "frozen", "conv", "gpu", "first_step",
         "prefix")
DEFAULT_PARTS = ("speed", "first_step", "pipeline", "folder", "frozen")
STRATEGIES = ("linear_probe", "partial:3", "surgical:stage4", "bitfit", "full_finetune")
# The main study's transfer run, from a random init (its default source may not exist), 2 steps.
FIRST_STEP_CONFIG = "configs/transfer.py:strategy=scratch,steps=2"
# The conv part's layers: (size, in, out, kernel, stride), NHWC, batch --conv_batch.
CONV_LAYERS = ((56, 64, 64, 3, 1), (14, 256, 256, 3, 1))
# Set before jax starts its backends; a flag this jaxlib does not know aborts the process.
GPU_XLA_FLAGS = ("--xla_gpu_enable_latency_hiding_scheduler=true",)
GPU_ANCHORS = (
    {"what": "NVIDIA DeepLearningExamples ResNet-50 v1.5, PyTorch AMP, batch 256, A100 80GB",
     "img_s": 2470},
    {"what": "MLPerf Training v3.0 ResNet-50, per H100", "img_s": 7000},
)
GPU_GOALS = {"synthetic": 5000, "pipeline": 3500}   # img/s on one H100.


# ---------------------------------------------------------------------------
# Parts: each is run(args, shapes, jtl_of), prints its table and returns its results.
# ---------------------------------------------------------------------------
def speed(args, shapes: dict, jtl_of) -> dict:
  """jtl and PyTorch train and inference steps, each side in a fresh process per round, in
  alternating rounds, per shape."""
  tv, out = torch_version(), {}
  for name, shape in shapes.items():
    print(f"speed: {name} ({shape}) ...", flush=True)
    jtl = jtl_of(name)   # Here for its parameter count and compile times (and the next parts).
    jtl.compile_train()
    fns = {"jtl": ["train", "infer"]}
    if tv:
      params = sum(p.numel() for p in bench_lib.torch_resnet(shape).parameters())
      if params != jtl.params:
        raise AssertionError(f"{shape}: PyTorch network has {params:,} parameters, "
                             f"jtl's {jtl.params:,}; they must be the same network.")
      fns["torch"] = ["train", "infer"]
    times = in_processes(shape, fns, args.repeats, args.least_s, args.torch_threads)
    med = {k: statistics.median(v) for k, v in times.items()}
    side = lambda who: {"train_img_s": shape.batch / med[f"{who}_train"],
                        "infer_img_s": shape.batch / med[f"{who}_infer"],
                        "train_step_ms": med[f"{who}_train"] * 1e3,
                        "infer_ms": med[f"{who}_infer"] * 1e3}
    r = out[name] = {
        "shape": dataclasses.asdict(shape), "params": jtl.params,
        "torch_threads": args.torch_threads, "rounds_s": times,
        "jtl": side("jtl") | {"compile_train_s": jtl.compile_train_s,
                              "compile_infer_s": jtl.compile_infer_s},
        "torch": side("torch") if tv else "not installed",
        # jtl images/s over PyTorch's = PyTorch's time over jtl's, round by round.
        "ratio": {"train": paired_ratio(times["torch_train"], times["jtl_train"]),
                  "infer": paired_ratio(times["torch_infer"], times["jtl_infer"])}
                 if tv else "not installed"}
    ratio = r["ratio"] if not tv else (
        f"train {r['ratio']['train']:.2f}, inference {r['ratio']['infer']:.2f}")
    print(f"  jtl train {r['jtl']['train_img_s']:.1f} img/s, inference "
          f"{r['jtl']['infer_img_s']:.1f} img/s; jtl/PyTorch {ratio}", flush=True)
  pick = lambda r, who, key: r[who][key] if isinstance(r[who], dict) else r[who]
  table(["shape", "jtl train img/s", "PyTorch train img/s", "train jtl/PyTorch",
         "jtl inference img/s", "PyTorch inference img/s", "inference jtl/PyTorch",
         "jtl compile train / inference (s)"],
        [[f"{n}: {shapes[n]}", fmt(r["jtl"]["train_img_s"]), fmt(pick(r, "torch", "train_img_s")),
          fmt(pick(r, "ratio", "train"), ".2f"), fmt(r["jtl"]["infer_img_s"]),
          fmt(pick(r, "torch", "infer_img_s")), fmt(pick(r, "ratio", "infer"), ".2f"),
          f"{r['jtl']['compile_train_s']:.1f} / {r['jtl']['compile_infer_s']:.1f}"]
         for n, r in out.items()])
  return out


def breakdown(args, shapes: dict, jtl_of) -> dict:
  """Where a train step's time goes, in jtl and in PyTorch: the step as it is, with its
  convolutions swapped for stand-ins that cost one pass over their input and output, and with
  BatchNorm also swapped for its affine map (no statistics); each side in a fresh process per
  round, in alternating rounds."""
  variants = ("train", "no_conv", "no_conv_bn")
  tv, out = torch_version(), {}
  for name, shape in shapes.items():
    print(f"breakdown: {name} ...", flush=True)
    fns = {"jtl": list(variants)} | ({"torch": list(variants)} if tv else {})
    times = in_processes(shape, fns, args.repeats, args.least_s, args.torch_threads)
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    r = out[name] = {"shape": dataclasses.asdict(shape), "step_ms": ms, "rounds_s": times}
    for who in ("jtl", "torch") if tv else ("jtl",):
      step, no_conv, rest = (ms[f"{who}_{v}"] for v in variants)
      r[who] = {"conv_ms": step - no_conv, "batchnorm_ms": no_conv - rest, "rest_ms": rest,
                "step_ms": step}
  who_rows = [("jtl", "jtl")] + ([("torch", "PyTorch")] if tv else [])
  table(["shape", "who", "step (ms)", "convolutions (ms)", "BatchNorm (ms)",
         "the rest (ms): ReLU, adds, pooling, head, loss, optimizer"],
        [[n, label, f"{r[who]['step_ms']:.1f}", f"{r[who]['conv_ms']:.1f}",
          f"{r[who]['batchnorm_ms']:.1f}", f"{r[who]['rest_ms']:.1f}"]
         for n, r in out.items() for who, label in who_rows],
        "where a train step's time goes: the step minus the step with stand-ins (medians)")
  return out


def pipeline(args, shapes: dict, jtl_of) -> dict:
  """train_dataset's images/s alone, then feeding the step, against the step on a fixed
  batch, per shape."""
  import jax
  from jtl import data
  source, out = data.load_source("fashion_mnist", "train"), {}
  for name, shape in shapes.items():
    print(f"pipeline: {name} ...", flush=True)
    jtl = jtl_of(name)
    it = iter(data.train_dataset(source, batch_size=shape.batch, image_size=shape.size,
                                 channels=shape.channels, augment=True, seed=0))
    next(it)  # Starts the reader threads.
    n, t0, least = 0, time.perf_counter(), 0.3 if args.quick else 5.0
    while n < 3 or time.perf_counter() - t0 < least:
      next(it)
      n += 1
    alone = n * shape.batch / (time.perf_counter() - t0)
    # Fixed and fed steps in alternating rounds; a fed step includes waiting for its batch.
    fns = {"fixed": jtl.train, "fed": lambda: jtl.train(jax.device_put(next(it)))}
    fns["fed"]()
    times = interleaved(fns, 2 if args.quick else 4)
    step = shape.batch / statistics.median(times["fixed"])
    over = paired_ratio(times["fixed"], times["fed"])
    out[name] = {"pipeline_img_s": alone, "step_img_s": step,
                 "fed_step_img_s": shape.batch / statistics.median(times["fed"]),
                 "pipeline_over_step": alone / step, "fed_over_fixed": over,
                 "keeps_up": bool(alone >= step and over >= 0.9), "rounds_s": times}
  table(["shape", "pipeline alone img/s", "step img/s (batch on device)",
         "step img/s fed by the pipeline", "pipeline / step", "fed / on device", "keeps up"],
        [[f"{n}: {shapes[n]}", f"{r['pipeline_img_s']:.0f}", f"{r['step_img_s']:.1f}",
          f"{r['fed_step_img_s']:.1f}", f"{r['pipeline_over_step']:.1f}",
          f"{r['fed_over_fixed']:.2f}", "yes" if r["keeps_up"] else "NO"]
         for n, r in out.items()])
  return out


def folder(args, shapes: dict, jtl_of) -> dict:
  """jtl's folder: pipeline (JPEG decode, resize, padded random crop, flip, batches) against
  a PyTorch DataLoader over the same files with the same transforms and as many workers."""
  from jtl import data
  from jtl.data import pipeline as jtl_pipeline
  workers = jtl_pipeline._read_options().num_threads
  size, batch, count = 224, 32, 64 if args.quick else 512
  least = 0.3 if args.quick else 5.0
  root = tempfile.mkdtemp(prefix="jtl-bench-folder-")
  print(f"folder: {count} JPEGs of {args.folder_image[0]}x{args.folder_image[1]} to {size} px, "
        f"batch {batch}, {workers} threads / workers ...", flush=True)

  def rate(batches) -> float:
    next(batches)   # Starts the threads or worker processes.
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < least:
      next(batches)
      n += 1
    return n * batch / (time.perf_counter() - t0)

  try:
    for split, n in (("train", count), ("test", 4)):
      write_jpeg_folder(os.path.join(root, split), n, tuple(args.folder_image))
    source = data.load_source(f"folder:{root}", "train")
    out = {"images": count, "image_size": list(args.folder_image), "size": size,
           "batch": batch, "workers": workers, "cores": os.cpu_count(),
           "jtl_img_s": rate(iter(data.train_dataset(source, batch_size=batch, image_size=size,
                                                     seed=0)))}
    if torch_version():
      import torch
      loader = torch.utils.data.DataLoader(
          TorchFolder(os.path.join(root, "train"), size), batch_size=batch,
          shuffle=True, drop_last=True, num_workers=workers, persistent_workers=True,
          multiprocessing_context="spawn")   # fork is unsafe once jax runs threads; the
      # workers' start is outside the timing (rate's first batch).
      out["torch_img_s"] = rate(itertools.chain.from_iterable(itertools.repeat(loader)))
      out["jtl_over_torch"] = out["jtl_img_s"] / out["torch_img_s"]
    else:
      out["torch_img_s"] = out["jtl_over_torch"] = "not installed"
  finally:
    shutil.rmtree(root, ignore_errors=True)
  per_core = lambda x: x / os.cpu_count() if isinstance(x, float) else x
  table(["input pipeline, JPEG folder to 224 px batches", "img/s", "img/s per core",
         "jtl / PyTorch"],
        [["jtl folder: (grain, threads)", fmt(out["jtl_img_s"], ".0f"),
          fmt(per_core(out["jtl_img_s"]), ".0f"), fmt(out["jtl_over_torch"], ".2f")],
         ["PyTorch DataLoader (worker processes)", fmt(out["torch_img_s"], ".0f"),
          fmt(per_core(out["torch_img_s"]), ".0f"), "-"]])
  return out


def frozen(args, shapes: dict, jtl_of) -> dict:
  """One train step per strategy against the inference forward pass, in alternating rounds."""
  import flax.traverse_util as tu
  import jax
  import numpy as np
  from jtl import optim, train
  name = args.frozen_shape or ("resnet18" if "resnet18" in shapes else next(iter(shapes)))
  shape, jtl = shapes.get(name, SHAPES[name]), jtl_of(name)
  strategies = ("linear_probe", "full_finetune") if args.quick else STRATEGIES
  print(f"frozen: {name} ...", flush=True)
  step = jax.jit(train.train_step, donate_argnums=0)   # One compile per strategy.
  states, fns = {}, {"forward": jtl.infer}
  for strategy in strategies:
    if strategy == "full_finetune":   # The speed part's state and compiled step.
      fns[strategy] = jtl.train
      continue
    states[strategy] = make_state(jtl.model, jtl.variables, strategy, shape.num_classes,
                                  shape.channels)

    def run(s=strategy):
      states[s], metrics = step(states[s], jtl.batch, jtl.rng)
      jax.block_until_ready((states[s], metrics))
    fns[strategy] = run
  for fn in fns.values():
    fn()  # Compile and warm up.
  times = interleaved(fns, args.repeats)
  rows = []
  for strategy in strategies:
    state = jtl.state if strategy == "full_finetune" else states[strategy]
    rows.append({"strategy": strategy, "step_ms": statistics.median(times[strategy]) * 1e3,
                 "x_forward": paired_ratio(times[strategy], times["forward"]),
                 "x_full": paired_ratio(times[strategy], times["full_finetune"]),
                 "trainable": int(sum(np.size(v) for k, v in tu.flatten_dict(
                     state.params, sep="/").items() if k not in state.frozen)),
                 "opt_state_bytes": optim.state_bytes_per_label(state.opt_state)})
  by = {r["strategy"]: r for r in rows}
  checks = {"linear_probe <= 1.15x forward": by["linear_probe"]["x_forward"] <= 1.15}
  if "partial:3" in by:
    checks["partial:3 <= 0.40x full"] = by["partial:3"]["x_full"] <= 0.40
  r = {"model": shape.model, "size": shape.size, "batch": shape.batch, "shape": str(shape),
       "device": str(jax.devices()[0]), "forward_ms": statistics.median(times["forward"]) * 1e3,
       "rows": rows, "checks": checks, "rounds_s": times}
  table(["strategy", "step (ms)", "x forward", "x full", "trainable params",
         "optimizer state (bytes per label)"],
        [[row["strategy"], f"{row['step_ms']:.0f}", f"{row['x_forward']:.2f}",
          f"{row['x_full']:.2f}", f"{row['trainable']:,}",
          ", ".join(f"{k}: {v:,}" for k, v in sorted(row["opt_state_bytes"].items()))]
         for row in rows],
        f"frozen strategies, {shape}: inference forward {r['forward_ms']:.0f} ms")
  for check, ok in checks.items():
    print(f"{'PASS' if ok else 'MISS'}: {check}")
  return r


def conv(args, shapes: dict, jtl_of) -> list:
  """Each of CONV_LAYERS' three passes in XLA, jtl.ops (oneDNN) and PyTorch eager, all in
  alternating rounds."""
  import numpy as np
  from jax import lax
  from jtl import ops
  if not ops.available():
    raise RuntimeError("conv: jtl.ops' oneDNN library did not load (see its notice above)")
  xla_conv = lambda x, w, s, p: lax.conv_general_dilated(
      x, w, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rng, rows = np.random.default_rng(0), []
  for size, cin, cout, k, stride in CONV_LAYERS:
    n, pad = args.conv_batch, k // 2
    o = (size + 2 * pad - k) // stride + 1
    x, w, dy = (rng.standard_normal(s, np.float32) for s in
                ((n, size, size, cin), (k, k, cin, cout), (n, o, o, cout)))
    w *= 0.05
    variants = {"xla": jax_conv_passes(xla_conv, stride, pad, x, w, dy),
                "onednn": jax_conv_passes(ops.conv, stride, pad, x, w, dy)}
    if torch_version():
      variants["torch"] = torch_conv_passes(stride, pad, x, w, dy, args.torch_threads)
    fns = {(v, p): fn for v, passes in variants.items() for p, fn in passes.items()}
    for fn in fns.values():
      fn()  # Compile and warm up.
    times = interleaved(fns, args.repeats)
    layer = {"batch": n, "size": size, "in": cin, "out": cout, "kernel": k, "stride": stride}
    for p in ("fwd", "dgrad", "wgrad"):
      row = {"layer": layer, "pass": p}
      for v in ("xla", "onednn", "torch"):
        row[f"{v}_ms"] = statistics.median(times[v, p]) * 1e3 if v in variants else "not installed"
      for v in ("xla", "torch"):
        row[f"{v}_over_onednn"] = (paired_ratio(times[v, p], times["onednn", p]) if v in variants
                                   else "not installed")
      rows.append(row)
  table(["layer", "pass", "XLA (ms)", "oneDNN (ms)", "PyTorch (ms)", "XLA / oneDNN",
         "PyTorch / oneDNN"],
        [["{kernel}x{kernel}/{stride}, batch {batch}, {size}x{size}, {in}->{out}".format(
            **r["layer"]), r["pass"], fmt(r["xla_ms"]), fmt(r["onednn_ms"]), fmt(r["torch_ms"]),
          fmt(r["xla_over_onednn"], ".2f"), fmt(r["torch_over_onednn"], ".2f")] for r in rows],
        f"convolutions, median ms of {args.repeats} rounds")
  return rows


def gpu(args, shapes: dict, jtl_of) -> dict:
  """Training images/s with bf16 compute: from one batch on the device, then through jtl's
  pipeline two batches ahead."""
  import grain
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jtl import data, models, train
  dry = args.dry_run or jax.devices()[0].platform != "gpu"
  shape = Shape(args.gpu_model, 32, 4) if dry else Shape(args.gpu_model, 224, args.gpu_batch)
  steps, warmup, images = (2, 1, 16) if dry else (args.gpu_steps, 5, 4096)
  kind = jax.devices()[0].device_kind
  print(f"gpu: {kind}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}"
        + ("" if args.flags_before_jax else " (jax was imported before: they may not apply)"),
        flush=True)
  if dry:
    print(f"gpu: dry run ({'--dry_run' if args.dry_run else 'no GPU'}): {shape}, {steps} "
          "steps; these are not GPU numbers.", flush=True)
  model = models.get_model(shape.model, num_classes=1000, dtype=jnp.bfloat16)
  state = make_state(model, random_variables(model, shape), "full_finetune", 1000, 3)
  rng, step = jax.random.key(0), jax.jit(train.train_step, donate_argnums=0)

  batch = jax.device_put(random_batch(shape, np.random.default_rng(0)))
  t = time.perf_counter()
  state, _ = step(state, batch, rng)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t
  seconds, state = timed_steps(step, state, itertools.repeat(batch), rng, warmup, steps)
  results = {"synthetic": {"img_s": steps * shape.batch / seconds,
                           "step_ms": seconds / steps * 1e3, "first_step_s": compile_s}}

  if args.gpu_source == "fashion_mnist":
    source = data.load_source("fashion_mnist", "train")
  else:
    r = np.random.default_rng(0)
    source = data.ArraySource("random", r.integers(0, 256, (images, 224, 224, 3), dtype=np.uint8),
                              r.integers(0, 1000, images), [str(i) for i in range(1000)])
  threads = args.gpu_threads
  options = (grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
             if threads else None)
  host = iter(data.train_dataset(source, batch_size=shape.batch, image_size=shape.size,
                                 channels=3, augment=True, seed=0, read_options=options))
  next(host)   # Starts the reader threads.
  t, n = time.perf_counter(), max(steps // 2, 2)
  for _ in range(n):
    next(host)
  alone = n * shape.batch / (time.perf_counter() - t)
  seconds, state = timed_steps(step, state, prefetch_to_device(host), rng, warmup, steps)
  results["pipeline"] = {"img_s": steps * shape.batch / seconds, "step_ms": seconds / steps * 1e3,
                         "host_pipeline_img_s": alone, "source": repr(source)}

  goals = {k: {"goal_img_s": v, "img_s": results[k]["img_s"],
               "met": None if dry else bool(results[k]["img_s"] >= v)}
           for k, v in GPU_GOALS.items()}
  table(["measurement", "img/s", "step (ms)", "goal on one H100", "met"],
        [[k, f"{r['img_s']:,.0f}", f"{r['step_ms']:.1f}", f">= {GPU_GOALS[k]:,}",
          "-" if dry else ("yes" if goals[k]["met"] else "NO")] for k, r in results.items()]
        + [[f"anchor: {a['what']}", f"{a['img_s']:,}", "-", "-", "-"] for a in GPU_ANCHORS],
        f"{shape}, bf16 compute / float32 params, {kind}"
        + (" (DRY RUN: not GPU numbers)" if dry else ""))
  return {"device_kind": kind, "dry_run": dry, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "flags_before_jax": args.flags_before_jax, "shape": dataclasses.asdict(shape),
          "steps": steps, "warmup": warmup, "compute_dtype": "bfloat16",
          "param_dtype": "float32", "layout": "NHWC", "results": results, "goals": goals,
          "anchors": list(GPU_ANCHORS)}


def first_step(args, shapes: dict, jtl_of) -> dict:
  """Runs --first_step_config twice on one fresh compilation cache, cold then warm, and the
  same work in PyTorch twice (bench_lib.torch_first_step), each in a fresh process."""
  cache = tempfile.mkdtemp(prefix="jtl-bench-cache-")
  env = {**os.environ, "JTL_COMPILATION_CACHE": cache}
  out = {"config": args.first_step_config}
  print(f"first_step: {args.first_step_config}, cold then warm cache ...", flush=True)

  def launch(cmd, env=None):
    """Seconds from starting `cmd` to the end of its first step, and the process's whole time."""
    t, launched = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         + proc.stderr[-2000:])
    return proc.stdout, launched, time.perf_counter() - t

  try:
    for which in ("cold", "warm"):
      workdir = os.path.join(cache, f"run-{which}")   # Inside the cache dir: one rmtree.
      _, launched, process_s = launch(
          [sys.executable, "-m", "jtl.main", f"--config={args.first_step_config}",
           f"--workdir={workdir}", "--config.progress=False"], env)
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      out[which] = {"first_step_s": summary["first_step_s"], "process_s": process_s,
                    "from_process_start_s": summary["first_step_at"] - launched}
      shutil.rmtree(workdir)
    out["cache_bytes"] = sum(os.path.getsize(os.path.join(d, n))
                             for d, _, names in os.walk(cache) for n in names)
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  out["cold_over_warm"] = out["cold"]["first_step_s"] / out["warm"]["first_step_s"]
  rows = [[f"jtl, {w} compilation cache", f"{out[w]['from_process_start_s']:.1f} s",
           f"{out[w]['first_step_s']:.1f} s", f"{out[w]['process_s']:.1f} s"]
          for w in ("cold", "warm")]
  if torch_version() and args.first_step_config == FIRST_STEP_CONFIG:
    from jtl.data.sources import FASHION_MNIST_DIR
    # The default config's run: the small shape at its batch (10 shots x 5 classes), lr 0.01.
    spec = {"shape": dataclasses.asdict(dataclasses.replace(SHAPES["small"], batch=50)),
            "arch": resnet_arch("resnet18"), "idx_dir": FASHION_MNIST_DIR,
            "classes": [5, 6, 7, 8, 9], "shots": 10, "lr": 0.01}
    runs = []
    for _ in range(2):   # The second with the files and libraries in the OS cache, as jtl's warm.
      stdout, launched, process_s = launch(
          [sys.executable, os.path.join(ROOT, "experiments", "bench_lib.py"), "first_step",
           json.dumps(spec)])
      at = float(stdout.split("first_step_at=")[1].split()[0])
      runs.append({"from_process_start_s": at - launched, "process_s": process_s})
    out["torch"] = runs
    for w, i in (("cold", 0), ("warm", 1)):
      out[f"{w}_over_torch"] = out[w]["from_process_start_s"] / runs[i]["from_process_start_s"]
    rows += [[f"PyTorch eager, run {i + 1}", f"{r['from_process_start_s']:.1f} s", "-",
              f"{r['process_s']:.1f} s"] for i, r in enumerate(runs)]
  else:
    out["torch"] = "not installed" if not torch_version() else "only for the default config"
  table(["time to first step", "process start to end of step 1", "run start to end of step 1",
         "whole process"], rows)
  if "cold_over_torch" in out:
    print(f"jtl / PyTorch, process start to end of step 1: cold {out['cold_over_torch']:.1f}x, "
          f"warm {out['warm_over_torch']:.1f}x (goal: at most 2x)")
  return out


def prefix(args, shapes: dict, jtl_of) -> dict:
  """The same linear probe trained with its frozen prefix recomputed every step, cached by
  the run, and found in the cache; runs under WORKDIR/prefix."""
  import flax.traverse_util as tu
  import numpy as np
  from jtl import checkpoint, runtime, train
  from jtl.config import base_config
  small, root = SHAPES["small"], os.path.join(args.workdir, "prefix")

  def config(**fields):
    c = base_config()
    c.model.name, c.model.small_stem, c.model.width = small.model, small.small_stem, small.width
    c.data.image_size, c.data.channels, c.data.augment = small.size, small.channels, False
    c.data.batch_size, c.data.eval_batch_size = args.prefix_batch, 500
    c.eval_every, c.progress, c.log_every = 0, False, 10 ** 9
    c.optim.warmup_steps = 0
    for k, v in fields.items():
      parent, _, leaf = k.rpartition(".")
      (c[parent] if parent else c)[leaf] = v
    c.checkpoint_every = c.total_steps
    return c

  shutil.rmtree(root, ignore_errors=True)
  runtime.enable_compilation_cache()
  images = args.prefix_shots * 5 or 30000   # Fashion-MNIST has 6000 training images a class.
  steps = args.prefix_epochs * images // args.prefix_batch
  print(f"prefix: linear probe, {args.prefix_epochs} epochs of {images} images ({steps} steps "
        f"of {args.prefix_batch}), {small.model} x{small.width:g} at {small.size} px ...",
        flush=True)
  rows = []
  # A fresh activation cache, so that the first "auto" run computes them.
  with tempfile.TemporaryDirectory(prefix="jtl-prefix-") as cache, \
       mock.patch.dict(os.environ, {"JTL_PREFIX_CACHE": cache}):
    source = os.path.join(root, "source")
    train.train_and_evaluate(config(**{"data.classes": (0, 1, 2, 3, 4),
                                       "total_steps": args.prefix_source_steps}), source)
    for mode, name in (("never", "never"), ("auto", "auto"), ("auto", "auto_warm")):
      t = time.perf_counter()
      summary = train.train_and_evaluate(config(**{
          "data.classes": (5, 6, 7, 8, 9), "data.shots": args.prefix_shots or None,
          "init": source, "strategy.name": "linear_probe", "data.cache_prefix": mode,
          "optim.lr": 0.1, "total_steps": steps}), os.path.join(root, name))
      rows.append({"run": name, "cache_prefix": mode, "end_to_end_s": time.perf_counter() - t,
                   "train_loop_s": summary["train_time_s"],
                   "test_accuracy": summary["test_accuracy"],
                   "cached_through": summary["prefix_cached_through"]})
  a, b = (tu.flatten_dict(checkpoint.load_model(os.path.join(root, m))[0], sep="/")
          for m in ("never", "auto"))
  out = {"epochs": args.prefix_epochs, "images": images, "steps": steps,
         "batch": args.prefix_batch, "rows": rows,
         "max_param_difference": max(float(np.abs(a[k] - b[k]).max()) for k in a),
         "speedup_end_to_end": rows[0]["end_to_end_s"] / rows[1]["end_to_end_s"],
         "speedup_end_to_end_warm": rows[0]["end_to_end_s"] / rows[2]["end_to_end_s"],
         "speedup_train_loop": rows[0]["train_loop_s"] / rows[1]["train_loop_s"]}
  label = {"never": "recomputed every step", "auto": "cached (computed in this run)",
           "auto_warm": "cached (found in the cache)"}
  table(["prefix", "end to end (s)", "training loop (s)", "test accuracy"],
        [[label[r["run"]], f"{r['end_to_end_s']:.1f}", f"{r['train_loop_s']:.1f}",
          f"{r['test_accuracy']:.4f}"] for r in rows])
  print(f"speed-up: {out['speedup_end_to_end']:.1f}x end to end "
        f"({out['speedup_end_to_end_warm']:.1f}x with the activations already cached), "
        f"{out['speedup_train_loop']:.1f}x in the training loop; largest parameter "
        f"difference {out['max_param_difference']:.2e}")
  return out


RUNS = {"speed": speed, "breakdown": breakdown, "pipeline": pipeline, "folder": folder, "frozen": frozen, "conv": conv, "gpu": gpu,
        "first_step": first_step, "prefix": prefix}


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                      help=f"some of {', '.join(PARTS)}")
  parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test")
  parser.add_argument("--shapes", default=",".join(SHAPES), help=f"some of {', '.join(SHAPES)}")
  parser.add_argument("--batches", default="", help="per-shape batch sizes, e.g. resnet50=16")
  parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                      help="PyTorch's threads (default: every core)")
  parser.add_argument("--workdir", default="runs/bench")
  part = parser.add_argument_group("frozen, first_step and conv")
  part.add_argument("--frozen_shape", default=None,
                    help="default resnet18 if among --shapes, else the first of them")
  part.add_argument("--first_step_config", default=FIRST_STEP_CONFIG)
  part.add_argument("--conv_batch", type=int, default=32)
  part.add_argument("--folder_image", type=int, nargs=2, default=(500, 375), metavar=("W", "H"),
                    help="the folder part's JPEG size (default: ImageNet's typical 500x375)")
  part = parser.add_argument_group("prefix")
  part.add_argument("--prefix_epochs", type=int, default=20)
  part.add_argument("--prefix_shots", type=int, default=0, help="per class; 0: all")
  part.add_argument("--prefix_batch", type=int, default=500)
  part.add_argument("--prefix_source_steps", type=int, default=50)
  part = parser.add_argument_group("gpu")
  part.add_argument("--gpu_model", default="resnet50")
  part.add_argument("--gpu_batch", type=int, default=256)
  part.add_argument("--gpu_steps", type=int, default=50, help="timed steps per measurement")
  part.add_argument("--gpu_source", default="synthetic", choices=("synthetic", "fashion_mnist"))
  part.add_argument("--gpu_threads", type=int, default=0,
                    help="pipeline threads (0: jtl's default)")
  part.add_argument("--xla_flags", default="", help="more XLA flags, space-separated")
  part.add_argument("--dry_run", action="store_true",
                    help="tiny sizes on whatever device there is (automatic without a GPU)")
  args = parser.parse_args(argv)
  args.parts = args.parts.split(",")
  for given, known, what in ((args.parts, PARTS, "part"),
                             (args.shapes.split(","), SHAPES, "shape")):
    if unknown := set(given) - set(known):
      parser.error(f"unknown {what}(s) {', '.join(sorted(unknown))}; expected {', '.join(known)}")
  if "conv" in args.parts and os.environ.get("JTL_ONEDNN") == "0":
    parser.error("the conv part times jtl.ops' oneDNN convolutions, which JTL_ONEDNN=0 turns "
                 "off: run it without that variable")
  args.repeats = args.repeats or (2 if args.quick else 5)
  args.least_s = 0.2 if args.quick else 2.0   # Seconds of timed calls per fn and process.
  return args


def main(argv=None) -> dict:
  args = parse(argv)
  args.flags_before_jax = "jax" not in sys.modules
  if "gpu" in args.parts:   # Before jax starts, which the lines below make it do.
    flags = os.environ.get("XLA_FLAGS", "").split() + [*GPU_XLA_FLAGS, *args.xla_flags.split()]
    os.environ["XLA_FLAGS"] = " ".join(dict.fromkeys(flags))
  batches = {k: int(v) for k, v in (kv.split("=") for kv in filter(None, args.batches.split(",")))}
  shapes = {n: dataclasses.replace(SHAPES[n], batch=batches.get(n, SHAPES[n].batch))
            for n in args.shapes.split(",")}
  started = time.perf_counter()
  result = {"machine": machine_info(),
            "settings": vars(args) | {"shapes": {n: dataclasses.asdict(s)
                                                 for n, s in shapes.items()}}}
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
      jtls[name] = Jtl(shapes.get(name) or SHAPES[name])
    return jtls[name]

  for name in PARTS:
    if name not in ("speed", "breakdown", "pipeline", "folder", "frozen"):
      jtls.clear()   # Frees the models that those parts share before the others start.
    if name in args.parts:
      result[name] = RUNS[name](args, shapes, jtl_of)
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
