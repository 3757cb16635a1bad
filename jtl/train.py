"""The jtl trainer: one run trains one model on one task and evaluates it.

A source run (configs/source.py) leaves a checkpoint; a transfer run
(configs/transfer.py) starts from it with a new head and a strategy. Both are
driven from `train_and_evaluate`, which reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from typing import Any, Callable

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jtl import adapt, checkpoint, convert, data, models, optim, prefix_cache, strategy, writers
from jtl import config as config_lib
from jtl import workdir as workdir_lib
from jtl.regularizers import make_penalty_fn


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Static: part of the compiled step, not of the checkpoint.
  apply_fn: Callable = struct.field(pytree_node=False)   # (variables, images, train) -> (logits, out, stats)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  loss_fn: Callable = struct.field(pytree_node=False)    # (logits, labels) -> per-example loss
  frozen: frozenset = struct.field(pytree_node=False)    # Paths that get no gradient.
  penalty_fn: Callable | None = struct.field(pytree_node=False, default=None)
  accum_steps: int = struct.field(pytree_node=False, default=1)   # Micro-batches per step.
  # Domain adaptation's term (jtl/adapt.py), on batches that carry "target_image".
  adapt_fn: Callable | None = struct.field(pytree_node=False, default=None)
  source: Any = None   # Source params and batch_stats, for L2-SP / DELTA; not checkpointed.


# ---------------------------------------------------------------------------
# Pure step functions.
# ---------------------------------------------------------------------------
def train_step(state: TrainState, batch, rng) -> tuple[TrainState, dict]:
  """One optimizer step on one global batch; returns the new state and metrics.

  With `state.accum_steps` k > 1 the batch is split into k micro-batches whose
  gradients are averaged before the one update (BatchNorm then sees micro-batch
  statistics, as in PyTorch's accumulation). Micro-batch j takes every k-th
  example, so each stays spread over all devices.
  """
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(functools.partial(_loss, state), has_aux=True)
  k = state.accum_steps
  if k == 1:
    (total, (logits, batch_stats, loss, terms)), grads = grad_fn(
        state.params, state.batch_stats, batch, rng)
  else:
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, k, *x.shape[1:]), 0, 1), batch)

    def accumulate(carry, xs):
      grads, stats = carry
      mb, j = xs
      (total, (logits, stats, loss, terms)), g = grad_fn(
          state.params, stats, mb, jax.random.fold_in(rng, j))
      return (jax.tree.map(jnp.add, grads, g), stats), (total, logits, loss, terms)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats), (total, logits, loss, terms) = jax.lax.scan(
        accumulate, (zeros, state.batch_stats), (micro, jnp.arange(k)))
    grads = jax.tree.map(lambda g: g / k, grads)
    total, loss, terms = total.mean(), loss.mean(), jax.tree.map(jnp.mean, terms)
    logits = jnp.swapaxes(logits, 0, 1).reshape(-1, logits.shape[-1])   # Back in batch order.
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,               # The data term alone, comparable across strategies.
      "total_loss": total,
      **terms,    # penalty/<name>, adapt/<method> and what adaptation logs besides.
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
      "update_norm": optax.tree.norm(updates),
      "param_norm": optax.tree.norm(params),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def _loss(state: TrainState, params, batch_stats, batch, rng):
  """The training loss of one (micro-)batch and what the step reports of it.

  With domain adaptation the batch's unlabeled target images run through the
  network together with the labeled ones (one BatchNorm batch, as in DANN); the
  classification loss and the penalties see the labeled part only.
  """
  # stop_gradient on frozen parameters takes them off the differentiation path,
  # so XLA computes no weight gradient (and no backward pass below the lowest
  # trainable layer) for them.
  params = _stop_gradient_at(params, state.frozen)
  variables = {"params": params, "batch_stats": batch_stats}
  images, n = batch["image"], batch["label"].shape[0]
  if state.adapt_fn:
    images = jnp.concatenate([images, batch[data.TARGET_IMAGE]])
  logits, out, batch_stats = state.apply_fn(variables, images, train=True, rng=rng)
  loss = state.loss_fn(logits[:n], batch["label"]).mean()
  penalties = (state.penalty_fn(params, {k: v[:n] for k, v in out.items()}, batch["image"],
                                state.source) if state.penalty_fn else {})
  terms = {f"penalty/{name}": v for name, v in penalties.items()}
  added = sum(penalties.values())
  if state.adapt_fn:
    adapt_terms, adapt_metrics = state.adapt_fn(params, out, logits, n, state.step)
    terms |= {f"adapt/{name}": v for name, v in adapt_terms.items()} | adapt_metrics
    added += sum(adapt_terms.values())
  return loss + added, (logits[:n], batch_stats, loss, terms)


def eval_step(state: TrainState, batch) -> dict:
  """Sums of loss and correct predictions over the real (mask=True) examples."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits, _, _ = state.apply_fn(variables, batch["image"], train=False, rng=None)
  mask = batch["mask"].astype(jnp.float32)
  return {"loss": jnp.sum(state.loss_fn(logits, batch["label"]) * mask),
          "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
          "count": jnp.sum(mask)}


def device_batch(batch: dict, sharding) -> dict:
  """This process's part of a global batch -> global arrays split over `sharding`'s devices."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def _stop_gradient_at(params, frozen: frozenset):
  if not frozen:
    return params
  flat = tu.flatten_dict(params, sep="/")
  return tu.unflatten_dict({k: jax.lax.stop_gradient(v) if k in frozen else v
                            for k, v in flat.items()}, sep="/")


# ---------------------------------------------------------------------------
# Pieces the trainer assembles.
# ---------------------------------------------------------------------------
def make_loss_fn(cfg, num_classes: int) -> Callable:
  """Per-example loss: "xent" (with label smoothing) or "mse" on one-hot targets."""
  def loss_fn(logits, labels):
    targets = jax.nn.one_hot(labels, num_classes)
    if cfg.name == "xent":
      return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, cfg.label_smoothing))
    if cfg.name == "mse":
      return jnp.mean((logits - targets) ** 2, axis=-1)
    raise ValueError(f"config field loss.name is {cfg.name!r}; expected 'xent' or 'mse'.")
  return loss_fn


@dataclasses.dataclass(frozen=True)
class Forward:
  """Normalizes uint8 images on device and runs the model.

  A frozen dataclass, so two phases with equal settings compare equal and share
  one compiled step. With `start` set, training batches hold the activations
  after that layer (a cached frozen prefix, jtl/prefix_cache.py) and only the
  layers after it run; evaluation always runs the whole network on images.
  """
  model: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]
  bn_train: tuple[str, ...]   # Stages whose BatchNorm uses batch statistics in training.
  start: str | None = None

  def __call__(self, variables, images, train: bool, rng=None):
    if train:
      x = images if self.start else self.normalize(images)
      (logits, out), new = self.model.apply(variables, x, train=True, bn_train=self.bn_train,
                                            start=self.start, mutable=["batch_stats"])
      return logits, out, new["batch_stats"]
    logits, out = self.model.apply(variables, self.normalize(images), train=False)
    return logits, out, variables["batch_stats"]

  def normalize(self, images):
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def activations(self, variables, images, layer: str):
    """The output of `layer` (inference mode) for a batch of images."""
    return self.model.apply(variables, self.normalize(images), train=False)[1][layer]


def make_apply_fn(model, mean, std, bn_train: tuple[str, ...], start: str | None = None
                  ) -> Forward:
  return Forward(model, tuple(float(m) for m in mean), tuple(float(s) for s in std),
                 tuple(bn_train), start)


def phase_fields(config, model, phase, mean, std, loaded=frozenset(), has_source=False,
                 start: str | None = None) -> tuple[dict, dict[str, optim.LabelHparams]]:
  """The static TrainState fields of one strategy phase (tx, frozen, apply_fn,
  penalty_fn), and each trained label's lr schedule and weight decay. `start`: training
  batches hold the activations after this layer (a cached frozen prefix)."""
  tx, hparams = optim.make_optimizer(config.optim, phase.labels, config.total_steps,
                                     phase.lr_mult, config.strategy.get("labels", {}))
  bn_train = strategy.bn_train_stages(phase.labels, config.strategy.bn)
  apply_fn = make_apply_fn(model, mean, std, bn_train, start)
  fields = dict(tx=tx, frozen=strategy.frozen_paths(phase.labels), apply_fn=apply_fn,
                penalty_fn=make_penalty_fn(config.reg, phase.labels, loaded, apply_fn, has_source))
  return fields, hparams


def evaluate(eval_fn, state, source, cfg, put) -> dict:
  """Accuracy and mean loss of `state` on a whole split."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  local = cfg.data.eval_batch_size // jax.process_count()
  batches = data.eval_batches(source, batch_size=local, image_size=cfg.data.image_size,
                              channels=cfg.data.channels, shard_index=jax.process_index(),
                              shard_count=jax.process_count())
  n = data.num_eval_batches(len(source), batch_size=local, shard_count=jax.process_count())
  for batch in tqdm(batches, total=n, desc="eval", leave=False, disable=not _show(cfg)):
    for k, v in jax.device_get(eval_fn(state, put(batch))).items():
      totals[k] += float(v)
  return {"accuracy": totals["correct"] / max(totals["count"], 1),
          "loss": totals["loss"] / max(totals["count"], 1)}


def _log(message: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(f"jtl: {message}")


def _progress(bar, cfg, step: int, metrics: dict, lr: float, speed: float) -> None:
  """Loss, accuracy, lr (the largest label's) and images/s: on the bar, or one log line."""
  shown = {"loss": f"{float(metrics['loss']):.4f}", "acc": f"{float(metrics['accuracy']):.3f}",
           "lr": f"{lr:.3g}", "img/s": f"{speed:.0f}"}
  if _show(cfg):
    bar.set_postfix(shown, refresh=False)
  elif jax.process_index() == 0 and step % cfg.log_every == 0:
    print(f"jtl: step {step}/{cfg.total_steps} " + " ".join(f"{k} {v}" for k, v in shown.items()),
          flush=True)


def _show(cfg) -> bool:
  return bool(cfg.progress) and jax.process_index() == 0


class _Preemption:
  """Turns SIGTERM (a preempted VM) and a first Ctrl-C into a flag the loop checks after
  each step; a second Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested = None    # The signal's name once one arrived.
    self._previous = {sig: signal.signal(sig, self._handle)
                      for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    if self.requested == "Ctrl-C" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

  def close(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Preempted(Exception):
  """Raised after SIGTERM or Ctrl-C, once the checkpoint is written; `code` is the exit code."""

  def __init__(self, message: str, code: int):
    super().__init__(message)
    self.code = code


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary."""
  # ---- Setup ---------------------------------------------------------------
  config_lib.check(config)
  started = time.time()
  batch_size = config.data.batch_size
  accum = config.optim.accum_steps
  for field, per in (("batch_size", accum), ("eval_batch_size", 1)):
    if config.data[field] % (jax.device_count() * per):
      raise ValueError(
          f"config field data.{field}={config.data[field]} must be divisible by the "
          f"{jax.device_count()} devices" + (f" x optim.accum_steps={accum}." if per > 1 else "."))
  target_batch = config.adapt.target_batch_size or batch_size
  if config.adapt.method != "none" and target_batch % (jax.device_count() * accum):
    raise ValueError(f"config field adapt.target_batch_size={target_batch} must be divisible by "
                     f"the {jax.device_count()} devices x optim.accum_steps={accum}.")
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  put = functools.partial(device_batch, sharding=sharded)

  # ---- Data ----------------------------------------------------------------
  splits = data.make_splits(config.data, seed=config.seed)
  train_src = splits["train"]
  num_classes = train_src.num_classes
  # Domain adaptation: the target's train images (unlabeled here), val carve and test split.
  target = target_splits(config, num_classes) if config.adapt.target else None
  # Source weights in any format jtl reads (a jtl run, hf:, torchvision:, bit:, orbax:).
  src_params, src_stats, source_meta = convert.load(config.init) if config.init else ({}, {}, {})
  arch = architecture(config, source_meta)
  mean = config.data.mean or source_meta.get("data", {}).get("mean") or (0.5,) * config.data.channels
  std = config.data.std or source_meta.get("data", {}).get("std") or (0.5,) * config.data.channels

  # ---- Model, strategy and source weights -------------------------------------
  model = models.get_model(arch["name"], num_classes=num_classes, small_stem=arch["small_stem"],
                           width=arch["width"], dtype=jnp.dtype(config.model.dtype))
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  dummy = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.channels))
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng, dummy)
  variables = {**variables, "params": adapt.add_head(config.adapt, variables["params"],
                                                     jax.random.fold_in(init_rng, 1))}
  strat = strategy.resolve(config.strategy, variables["params"], config.total_steps)
  source, loaded = None, frozenset()  # Source weights (for penalties), paths loaded.
  if config.init and strat.pretrained:
    # zero_head: BiT's choice, a re-initialized head starts from uniform outputs.
    variables, report = convert.load_into(
        variables, (src_params, src_stats, source_meta),
        dont_load=(*config.dont_load, f"{adapt.HEAD}/.*"),   # A domain head is never loaded.
        zero_head=config.zero_head, name=f"checkpoint {config.init}")
    loaded = (frozenset(strategy.param_paths(variables["params"]))
              - set(report["kept_from_init"]))
  params, batch_stats = variables["params"], variables["batch_stats"]
  if config.init and strat.pretrained:
    if config.reg.l2_sp or config.reg.delta:
      # A copy: the state is donated each step, so it must not alias the trained params.
      source = jax.tree.map(np.array, {"params": params, "batch_stats": batch_stats})
    _log(f"loaded {report['loaded']} arrays from {config.init}; "
         f"re-initialized {', '.join(report['kept_from_init']) or 'none'}")
  elif config.init:
    _log(f"strategy {strat.name}: training from a random init; {config.init} is not loaded")

  # A frozen prefix with fixed inputs runs once per dataset, not once per step.
  cached_from, _ = prefix_cache.cut(config, strat)
  if cached_from:
    name = prefix_cache.key(config, arch, cached_from, variables, train_src, mean, std)
    train_src = prefix_cache.cached_source(
        train_src, make_apply_fn(model, mean, std, ()),
        {"params": params, "batch_stats": batch_stats}, cached_from, name,
        batch_size=config.data.eval_batch_size, image_size=config.data.image_size,
        channels=config.data.channels, log=_log)
    _log(f"training on cached activations after {cached_from}: the frozen prefix runs no more")
  shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
  train_ds = data.train_dataset(
      train_src, batch_size=batch_size // jax.process_count(),
      image_size=None if cached_from else config.data.image_size, channels=config.data.channels,
      augment=config.data.augment and not cached_from, seed=config.seed, **shard)
  if config.adapt.method != "none":
    # Unlabeled target images beside each labeled batch: own order, no labels read.
    train_ds = data.paired_dataset(train_ds, data.train_dataset(
        data.Unlabeled(target["train"]), batch_size=target_batch // jax.process_count(),
        image_size=config.data.image_size, channels=config.data.channels,
        augment=config.data.augment, seed=data.target_seed(config.seed), labels=False, **shard))
    _log(f"adapting to {config.adapt.target} with {config.adapt.method}: {len(target['train'])} "
         f"unlabeled images, {target_batch} a step")
  train_iter = iter(train_ds)

  def phase_state(k: int, state: TrainState | None, steps_done: int):
    """The state for phase k (its optimizer, frozen set, BatchNorm modes and penalties),
    and its labels' lr schedules for the log."""
    fields, hparams = phase_fields(config, model, strat.phases[k], mean, std, loaded,
                                   source is not None, cached_from)
    if state is None:
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                        opt_state=fields["tx"].init(params), source=source,
                        loss_fn=make_loss_fn(config.loss, num_classes), accum_steps=accum,
                        adapt_fn=adapt.make_adapt_fn(config.adapt, config.total_steps),
                        **fields), hparams
    opt_state = optim.transplant(state.opt_state, fields["tx"].init(state.params), steps_done)
    return state.replace(opt_state=jax.device_put(opt_state, replicated), **fields), hparams

  os.makedirs(workdir, exist_ok=True)   # Only now: a refused config leaves no empty workdir.
  # One run per workdir, and a resume only under the settings it started with.
  release = workdir_lib.lock(workdir) if jax.process_index() == 0 else (lambda: None)
  try:
    workdir_lib.check_resume(workdir, config)
  except ValueError:
    release()
    raise
  _write_model_json(workdir, config, arch, num_classes, train_src.class_names, mean, std)
  skipped = _write_skipped(workdir, {**splits, **{f"target_{k}": v
                                                  for k, v in (target or {}).items()}})

  # ---- Resume ----------------------------------------------------------------
  mgr = checkpoint.manager(workdir, config.checkpoint_every, config.keep_checkpoints)
  latest = mgr.latest_step()
  # A checkpoint at step s holds the optimizer of the phase that ran step s.
  phase = strat.phase_at(max((latest or 0) - 1, 0))
  state, hparams = phase_state(phase, None, 0)
  state = jax.device_put(state, replicated)
  if latest is not None:
    state = checkpoint.restore(mgr, state, train_iter)
    _log(f"resumed from {workdir} at step {int(jax.device_get(state.step))}")
  start = int(jax.device_get(state.step))
  # The final evaluation (test/...) is redone by every run that reaches the end.
  writer = writers.MetricWriter(workdir, resume_step=start, redo=("test",))
  # A resumed run's summary covers what it validated before its checkpoint too.
  best_val, last_val = _logged_val(writer.kept)
  target_val = _logged_val(writer.kept, "val_target")[1]
  if jax.process_index() == 0:
    writers.write_atomic(os.path.join(workdir, "config.json"),
                         config.to_json_best_effort(indent=2))

  p_train = jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))
  p_eval = jax.jit(eval_step, out_shardings=replicated)

  # ---- Train loop -------------------------------------------------------------
  preemption = _Preemption()
  t0, images_seen, first_step_s = time.time(), 0, None
  bar = tqdm(range(start + 1, config.total_steps + 1), initial=start, total=config.total_steps,
             desc="train", disable=not _show(config))
  try:
    for step in bar:
      if strat.phase_at(step - 1) != phase:
        phase = strat.phase_at(step - 1)
        state, hparams = phase_state(phase, state, step - 1)
        _log(f"step {step}: phase {phase} of {strat.name} "
             f"({len(state.frozen)} frozen parameter arrays)")
        writer.write(step, {"strategy/phase": phase})
      state, metrics = p_train(state, put(next(train_iter)), step_rng)
      if first_step_s is None:   # Set-up, data, restore and compile: what a cache can save.
        jax.block_until_ready(state.step)
        first_step_s = time.time() - started
      images_seen += batch_size
      is_last = step == config.total_steps
      due_ckpt = step % config.checkpoint_every == 0 or is_last
      due_eval = is_last or bool(config.eval_every and step % config.eval_every == 0)
      if step % config.log_every == 0 or due_ckpt or preemption.requested:
        metrics = jax.device_get(metrics)
        if not np.isfinite(metrics["loss"]):
          good = mgr.latest_step()
          raise FloatingPointError(
              f"loss became {metrics['loss']} at step {step}; stopped. The last good checkpoint "
              f"({'step ' + str(good) if good is not None else 'none yet'}) is kept in "
              f"{os.path.join(workdir, checkpoint.CHECKPOINTS)}.")
        # Each label's lr as its optimizer applies it at this step (optax counts from 0).
        lrs = {label: float(h.lr(step - 1)) for label, h in hparams.items()}
        speed = images_seen / (time.time() - t0)
        writer.write(step, {f"train/{k}": v for k, v in metrics.items()} | {
            f"train/lr/{label}": v for label, v in lrs.items()} | {"train/images_per_sec": speed})
        _progress(bar, config, step, metrics, max(lrs.values(), default=0.0), speed)
      if splits.get("val") is not None and due_eval:
        val = evaluate(p_eval, state, splits["val"], config, put)
        writer.write(step, {f"val/{k}": v for k, v in val.items()})
        last_val = val
        if best_val is None or val["accuracy"] > best_val[1]:
          best_val = (step, val["accuracy"])
      if target and target["val"] is not None and due_eval:
        target_val = evaluate(p_eval, state, target["val"], config, put)
        writer.write(step, {f"val_target/{k}": v for k, v in target_val.items()})
      if due_ckpt or preemption.requested:
        checkpoint.save(mgr, state, train_iter, force=True)
      if preemption.requested:
        raise Preempted(f"{preemption.requested} at step {step}: checkpoint saved in {workdir}; "
                        "rerun the same command to resume.",
                        code=143 if preemption.requested == "SIGTERM" else 130)
    train_time = time.time() - t0

    # ---- Final evaluation -----------------------------------------------------
    # With a domain-adaptation target, test accuracy is the target's.
    test_split = target["test"] if target else splits["test"]
    test = evaluate(p_eval, state, test_split, config, put)
    summary = {
        "workdir": workdir, "steps": config.total_steps,
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "train_examples": len(train_src), "test_examples": len(test_split),
        "train_time_s": train_time,
        "first_step_s": first_step_s,   # From the call to the end of the first step.
        "images_per_sec": images_seen / train_time if images_seen else None,
        "trainable_params": int(sum(np.size(v) for k, v in tu.flatten_dict(
            jax.device_get(state.params), sep="/").items() if k not in state.frozen)),
        "total_params": models.count_params(state.params),
        "optimizer_state_bytes": optim.optimizer_state_bytes(state.opt_state),
        "optimizer_state_bytes_per_label": optim.state_bytes_per_label(state.opt_state),
        "strategy": strat.name,
        "prefix_cached_through": cached_from,   # Trained on cached activations after this layer.
        "skipped_files": skipped,
    }
    if best_val is not None:
      summary |= {"val_accuracy": last_val["accuracy"], "best_val_step": best_val[0],
                  "best_val_accuracy": best_val[1]}
    if target:
      source_test = evaluate(p_eval, state, splits["test"], config, put)
      writer.write(config.total_steps, {f"test_source/{k}": v for k, v in source_test.items()})
      summary |= {"adapt_method": config.adapt.method, "target": config.adapt.target,
                  "source_test_accuracy": source_test["accuracy"],
                  "target_train_examples": len(target["train"])}
      if target_val is not None:
        summary["target_val_accuracy"] = target_val["accuracy"]
    writer.write(config.total_steps, {f"test/{k}": v for k, v in test.items()})
    if jax.process_index() == 0:
      writers.write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary
  finally:
    release()
    preemption.close()
    mgr.wait_until_finished()
    mgr.close()
    writer.close()


def target_splits(config, num_classes: int) -> dict:
  """The domain-adaptation target's train (its images are the unlabeled pool), val (a
  labeled carve, adapt.target_val_per_class per class, or None) and test splits, over
  the same classes as config.data."""
  splits = data.make_splits({
      "name": config.adapt.target, "data_dir": config.data.data_dir,
      "classes": config.data.classes, "val_per_class": config.adapt.target_val_per_class,
      "skip_corrupt": config.data.skip_corrupt}, seed=config.seed)
  if splits["test"].num_classes != num_classes:
    raise ValueError(f"config field adapt.target={config.adapt.target!r} has "
                     f"{splits['test'].num_classes} classes but data.name={config.data.name!r} has "
                     f"{num_classes}; the target must share the labeled data's classes.")
  return splits


def enable_compilation_cache() -> str:
  """A persistent XLA compilation cache (~/.cache/jtl/xla or $JTL_COMPILATION_CACHE), so a
  rerun, a resume or a sweep's next cell of the same shape skips most of the compile."""
  path = os.environ.get("JTL_COMPILATION_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jtl", "xla")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def _logged_val(logged: list[dict], prefix: str = "val") -> tuple:
  """(best (step, accuracy), last {"accuracy", "loss"}) of the `prefix`/ rows among the kept
  metrics.jsonl rows `logged`, or Nones: what a resumed run validated before its checkpoint.
  Only process 0 writes metrics (and the summary); the others have no rows."""
  acc, loss = f"{prefix}/accuracy", f"{prefix}/loss"
  rows = [r for r in logged if acc in r]
  if not rows:
    return None, None
  best = max(rows, key=lambda r: r[acc])   # The first of equals, as in the loop.
  return (best["step"], best[acc]), {"accuracy": rows[-1][acc], "loss": rows[-1][loss]}


def _write_skipped(workdir: str, splits: dict) -> int:
  """Lists the undecodable images that `data.skip_corrupt` left out; returns their count."""
  skipped = sorted({p for split in splits.values() if split is not None
                    for p in getattr(split.parent, "skipped", ())})
  if skipped and jax.process_index() == 0:
    with open(os.path.join(workdir, data.SKIPPED_FILE), "w") as f:
      f.writelines(p + "\n" for p in skipped)
    _log(f"left out {len(skipped)} undecodable image(s); listed in "
         f"{os.path.join(workdir, data.SKIPPED_FILE)}")
  return len(skipped)


def _write_model_json(workdir, config, arch, num_classes, class_names, mean, std):
  """What a later transfer or `predict` needs to rebuild and feed this model."""
  if jax.process_index() != 0:
    return
  meta = {"model": {**arch, "dtype": config.model.dtype, "num_classes": num_classes},
          "class_names": list(class_names),
          "data": {"image_size": config.data.image_size, "channels": config.data.channels,
                   "mean": list(mean), "std": list(std)}}
  writers.write_atomic(os.path.join(workdir, checkpoint.MODEL_JSON), json.dumps(meta, indent=2))


def architecture(config, meta: dict) -> dict:
  """name, small_stem, width: from the config, or from the source's model.json if "auto".

  A source of another architecture fails here in one sentence, not as 100 mis-shapes.
  """
  source = meta.get("model", {})
  if config.model.name == "auto":
    if not source:
      raise ValueError("config.model.name='auto' takes the model from config.init, but "
                       f"{config.init or 'config.init (empty)'} describes no model.")
    return {"name": source["name"], "small_stem": source.get("small_stem", False),
            "width": source.get("width", 1.0)}
  if source.get("name") and source["name"] != config.model.name:
    raise ValueError(f"config.init {config.init} holds a {source['name']}, but config.model.name "
                     f"is {config.model.name!r}; set --config.model.name={source['name']} (or auto).")
  return {k: config.model[k] for k in ("name", "small_stem", "width")}
