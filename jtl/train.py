"""The jtl trainer: one run trains one model on one task and evaluates it.

A source run (configs/source.py) leaves a checkpoint; a transfer run
(configs/transfer.py) starts from it with a new head and a strategy. Both are
driven from `train_and_evaluate`, which reads top to bottom. The state of a run is
built by `create_state` and moved to a strategy's next phase by `switch_phase`;
the trainer, the tests and the benchmarks all call those two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
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

from jtl import adabn, adapt, checkpoint, convert, data, models, optim, prefix_cache, runtime
from jtl import strategy
from jtl import config as config_lib
from jtl import workdir as workdir_lib
from jtl import writers
from jtl.models import build as model_build
from jtl.regularizers import make_penalty_term
from jtl.runtime import log


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
  # Terms added to the loss: penalties (jtl/regularizers.py) and domain adaptation's
  # (jtl/adapt.py), each term(state, params, out, logits, batch, num_labeled) -> (losses, metrics).
  loss_terms: tuple = struct.field(pytree_node=False, default=())
  accum_steps: int = struct.field(pytree_node=False, default=1)   # Micro-batches per step.
  # The source weights the run started from ({"params", "batch_stats"}), which L2-SP and
  # DELTA pull toward; not checkpointed.
  anchor: Any = None


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
      # NaN when a step holds no labeled images (source-free adaptation, jtl/adapt.py).
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]) if len(logits) else jnp.nan,
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
  if data.TARGET_IMAGE in batch:
    images = jnp.concatenate([images, batch[data.TARGET_IMAGE]])
  logits, out, batch_stats = state.apply_fn(variables, images, train=True, rng=rng)
  # No labeled images (source-free adaptation): the loss terms are the whole loss.
  loss = state.loss_fn(logits[:n], batch["label"]).mean() if n else jnp.zeros((), jnp.float32)
  added, terms = 0.0, {}
  for term in state.loss_terms:
    losses, metrics = term(state, params, out, logits, batch, n)
    added += sum(losses.values())
    terms |= losses | metrics
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
# The state of a run, and its strategy's phases.
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


def phase_fields(config, forward: model_build.Forward, phase: strategy.Phase,
                 loaded=frozenset(), has_anchor: bool = False
                 ) -> tuple[dict, dict[str, optim.LabelHparams]]:
  """The static TrainState fields of one strategy phase (tx, frozen, apply_fn with the
  phase's BatchNorm modes, loss_terms), and each trained label's lr schedule and weight
  decay (what the trainer logs as train/lr/<label>)."""
  tx, hparams = optim.make_optimizer(config.optim, phase.labels, config.total_steps,
                                     phase.lr_mult, config.strategy.get("labels", {}))
  apply_fn = dataclasses.replace(
      forward, bn_train=phase.bn_train(config.strategy.bn))
  terms = (make_penalty_term(config.reg, phase.labels, loaded, apply_fn, has_anchor),
           adapt.make_adapt_term(config.adapt, config.total_steps))
  return dict(tx=tx, frozen=strategy.frozen_paths(phase.labels), apply_fn=apply_fn,
              loss_terms=tuple(t for t in terms if t)), hparams


def create_state(config, forward: model_build.Forward, variables: dict, phase: strategy.Phase,
                 *, num_classes: int, loaded=frozenset(), anchor=None
                 ) -> tuple[TrainState, dict[str, optim.LabelHparams]]:
  """A run's state at step 0 in strategy phase `phase`, and its labels' lr schedules.

  `forward` runs the model (jtl/models/build.py); `variables` holds params and
  batch_stats; `loaded` the paths that came from the source checkpoint; `anchor` the
  source weights that L2-SP / DELTA pull toward.

  >>> state, hparams = create_state(config, built.forward, built.variables,   # doctest: +SKIP
  ...                               strat.phases[0], num_classes=5)
  """
  fields, hparams = phase_fields(config, forward, phase, loaded, anchor is not None)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"],
                    opt_state=runtime.run_once(fields["tx"].init, params),
                    loss_fn=make_loss_fn(config.loss, num_classes),
                    accum_steps=config.optim.accum_steps, anchor=anchor, **fields), hparams


def switch_phase(state: TrainState, config, phase: strategy.Phase, steps_done: int,
                 loaded=frozenset()) -> tuple[TrainState, dict[str, optim.LabelHparams]]:
  """`state` moved to strategy phase `phase` after `steps_done` steps: the phase's
  optimizer (moments of labels that keep training carried over), frozen set, BatchNorm
  modes and penalties."""
  fields, hparams = phase_fields(config, state.apply_fn, phase, loaded, state.anchor is not None)
  opt_state = optim.transplant(state.opt_state, runtime.run_once(fields["tx"].init, state.params),
                               steps_done)
  return state.replace(opt_state=opt_state, **fields), hparams


# ---------------------------------------------------------------------------
# Pieces the trainer assembles.
# ---------------------------------------------------------------------------
def initial_weights(config, built: model_build.Built, init: tuple, rng):
  """(variables, strategy, loaded paths, anchor): the model's starting point, with the
  source checkpoint `init` (params, batch_stats, meta) merged in unless the strategy
  trains from scratch."""
  variables = {**built.variables, "params": adapt.add_head(config.adapt, built.variables["params"],
                                                           jax.random.fold_in(rng, 1))}
  strat = strategy.resolve(config.strategy, variables["params"], config.total_steps)
  if not (config.init and strat.pretrained):
    if config.init:
      log(f"strategy {strat.name}: training from a random init; {config.init} is not loaded")
    return variables, strat, frozenset(), None
  # zero_head: BiT's choice, a re-initialized head starts from uniform outputs.
  variables, report = convert.load_into(
      variables, init, dont_load=(*config.dont_load, f"{adapt.HEAD}/.*"),  # Never a domain head.
      zero_head=config.zero_head, name=f"checkpoint {config.init}")
  loaded = frozenset(strategy.param_paths(variables["params"])) - set(report["kept_from_init"])
  # A copy: the state is donated each step, so it must not alias the trained params.
  anchor = (jax.tree.map(np.array, variables) if config.reg.l2_sp or config.reg.delta else None)
  log(f"loaded {report['loaded']} arrays from {config.init}; "
      f"re-initialized {', '.join(report['kept_from_init']) or 'none'}")
  return variables, strat, loaded, anchor


def training_data(config, built, variables, strat, train_split, adaptation):
  """(the training batches' dataset, the layer a cached frozen prefix ends at or None)."""
  # A frozen prefix with fixed inputs runs once per dataset, not once per step.
  cached_from, _ = prefix_cache.cut(config, strat)
  if cached_from:
    name = prefix_cache.key(config, built.arch, cached_from, variables, train_split,
                            built.mean, built.std)
    train_split = prefix_cache.cached_source(
        train_split, built.forward, variables, cached_from, name,
        batch_size=config.data.eval_batch_size, image_size=config.data.image_size,
        channels=config.data.channels, log=log)
    log(f"training on cached activations after {cached_from}: the frozen prefix runs no more")
  shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
  ds = data.train_dataset(
      train_split, batch_size=config.data.batch_size // jax.process_count(),
      image_size=None if cached_from else config.data.image_size, channels=config.data.channels,
      augment=config.data.augment and not cached_from, seed=config.seed, **shard)
  if adaptation:   # Unlabeled target images beside each labeled batch: own order, no labels.
    ds = adaptation.training_data(ds, config, **shard)
    log(adaptation.describe())
  return ds, cached_from


def rngs(config) -> tuple[jax.Array, jax.Array]:
  """(the random init's key, the steps' key): both from config.seed, unless config.init_seed
  draws the init apart from the data order and dropout."""
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  if config.init_seed is not None:
    init_rng = jax.random.split(jax.random.key(config.init_seed))[0]
  return init_rng, step_rng


def extra_test_splits(config, num_classes: int) -> dict:
  """The test splits of config.data.extra_test (e.g. the target under a corruption), over
  config.data's classes: scored once at the end, as out-of-distribution accuracy."""
  out = {}
  for name in config.data.extra_test:
    split = data.make_splits({"name": name, "data_dir": config.data.data_dir,
                              "classes": config.data.classes,
                              "skip_corrupt": config.data.skip_corrupt}, seed=config.seed)["test"]
    if split.num_classes != num_classes:
      raise ValueError(f"config field data.extra_test names {name!r}, which has "
                       f"{split.num_classes} classes; data.name={config.data.name!r} has "
                       f"{num_classes}.")
    out[name] = split
  return out


def check_batch_sizes(config) -> None:
  """Global batches split evenly over the devices (and accumulation's micro-batches)."""
  accum, devices = config.optim.accum_steps, jax.device_count()
  sizes = [("data.batch_size", config.data.batch_size, accum),
           ("data.eval_batch_size", config.data.eval_batch_size, 1)]
  if config.adapt.method != "none":
    sizes.append(("adapt.target_batch_size",
                  config.adapt.target_batch_size or config.data.batch_size, accum))
  for field, size, per in sizes:
    if size % (devices * per):
      raise ValueError(f"config field {field}={size} must be divisible by the {devices} devices"
                       + (f" x optim.accum_steps={accum}." if per > 1 else "."))


def evaluate(eval_step_fn, state, split, cfg, put) -> dict:
  """Accuracy and mean loss of `state` on a whole split."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  local = cfg.data.eval_batch_size // jax.process_count()
  batches = data.eval_batches(split, batch_size=local, image_size=cfg.data.image_size,
                              channels=cfg.data.channels, shard_index=jax.process_index(),
                              shard_count=jax.process_count())
  n = data.num_eval_batches(len(split), batch_size=local, shard_count=jax.process_count())
  for batch in tqdm(batches, total=n, desc="eval", leave=False,
                    disable=not runtime.show_progress(cfg)):
    for k, v in jax.device_get(eval_step_fn(state, put(batch))).items():
      totals[k] += float(v)
  return {"accuracy": totals["correct"] / max(totals["count"], 1),
          "loss": totals["loss"] / max(totals["count"], 1)}


class Validation:
  """The latest result of each validation split, and the best step of "val"; a resumed
  run starts from the rows its metrics.jsonl kept."""

  def __init__(self, splits: dict, kept_rows: list[dict]):
    self.splits = {name: s for name, s in splits.items() if s is not None}
    self.last = {name: _logged_val(kept_rows, name)[1] for name in self.splits}
    self.best = _logged_val(kept_rows, "val")[0]

  def run(self, eval_step_fn, state, config, put, writer, step: int) -> None:
    for name, split in self.splits.items():
      result = self.last[name] = evaluate(eval_step_fn, state, split, config, put)
      writer.write(step, {f"{name}/{k}": v for k, v in result.items()})
      if name == "val" and (self.best is None or result["accuracy"] > self.best[1]):
        self.best = (step, result["accuracy"])


def summarize(config, workdir, state, test, *, extra, validation, adaptation, labeled_test,
              train_examples, test_examples, timing, strat, cached_from, skipped) -> dict:
  """summary.json: test accuracy (and each extra test set's), validation, timing, sizes,
  and adaptation's fields."""
  train_time, started, first_step_s, images_seen = timing
  summary = {
      "workdir": workdir, "steps": config.total_steps,
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "train_examples": train_examples, "test_examples": test_examples,
      "train_time_s": train_time,
      "first_step_s": first_step_s,   # From the call to the end of the first step.
      # The end of the first step in Unix time: with the process's start (taken by whoever
      # started it), its time to the first step, imports included.
      "first_step_at": started + first_step_s if first_step_s is not None else None,
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
  summary |= {f"test_accuracy@{name}": result["accuracy"] for name, result in extra.items()}
  if validation.best is not None:
    summary |= {"val_accuracy": validation.last["val"]["accuracy"],
                "best_val_step": validation.best[0], "best_val_accuracy": validation.best[1]}
  if adaptation:
    summary |= adaptation.summary(labeled_test, validation.last.get("val_target"))
  return summary


def adapt_to_target(config, state, adaptation, sharding) -> tuple[TrainState, dict]:
  """(state, label-free scores) before the final evaluation of a run with a target: with
  adapt.adabn, every BatchNorm's statistics recomputed exactly on the target's unlabeled
  train images (AdaBN); then the scores of the final model's predictions on those images
  (jtl/adabn.py). No target label is read."""
  pool, variables = adaptation.splits["train"], {"params": state.params,
                                                 "batch_stats": state.batch_stats}
  images = dict(batch_size=config.data.eval_batch_size, image_size=config.data.image_size,
                channels=config.data.channels)
  if config.adapt.adabn:
    stats = adabn.recompute_batch_stats(state.apply_fn, variables, pool, **images)
    state = state.replace(batch_stats=jax.device_put(stats, sharding))
    variables["batch_stats"] = state.batch_stats
    log(f"AdaBN: BatchNorm statistics recomputed on {len(pool)} unlabeled images of "
        f"{config.adapt.target} (the checkpoint keeps the trained ones)")
  return state, adabn.label_free_scores(state.apply_fn, variables, pool, **images)


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary."""
  # ---- Setup ---------------------------------------------------------------
  config_lib.check(config)
  for doubt in config_lib.doubts(config):
    log(f"warning: {doubt}")
  started = time.time()
  check_batch_sizes(config)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  put = functools.partial(device_batch, sharding=sharded)

  # ---- Data ----------------------------------------------------------------
  splits = data.make_splits(config.data, seed=config.seed)
  num_classes = splits["train"].num_classes
  # Domain adaptation: the target's unlabeled train images, val carve and test split.
  adaptation = adapt.Adaptation.from_config(config, num_classes)
  extra_tests = extra_test_splits(config, num_classes)   # Scored at the end (e.g. OOD).

  # ---- Model, strategy and source weights -------------------------------------
  # The checkpoint to start from, in any format jtl reads (a jtl run, hf:, torchvision:, ...).
  init = convert.load(config.init) if config.init else ({}, {}, {})
  init_rng, step_rng = rngs(config)
  built = model_build.build(config, init[2], num_classes, init_rng)
  config = as_built(config, built.arch)   # config.json records the model that ran.
  variables, strat, loaded, anchor = initial_weights(config, built, init, init_rng)
  train_ds, cached_from = training_data(config, built, variables, strat, splits["train"],
                                        adaptation)
  forward = dataclasses.replace(built.forward, start=cached_from)
  train_iter = iter(train_ds)

  with contextlib.ExitStack() as resources:   # Every way out releases what was taken.
    os.makedirs(workdir, exist_ok=True)   # Only now: a refused config leaves no empty workdir.
    # One run per workdir, and a resume only under the settings it started with.
    if jax.process_index() == 0:
      resources.callback(workdir_lib.lock(workdir))
    workdir_lib.check_resume(workdir, config)
    _write_model_json(workdir, config, built, num_classes, splits["train"].class_names)
    skipped = _write_skipped(workdir, {**splits, **{f"target_{k}": v for k, v in (
        adaptation.splits if adaptation else {}).items()}})
    data.write_split_file(workdir, splits)   # A carved folder's test images, listed (issue 21).

    # ---- Resume --------------------------------------------------------------
    mgr = checkpoint.manager(workdir, config.checkpoint_every, config.keep_checkpoints)
    resources.callback(mgr.close)
    resources.callback(mgr.wait_until_finished)
    latest = mgr.latest_step()
    # A checkpoint at step s holds the optimizer of the phase that ran step s.
    phase = strat.phase_at(max((latest or 0) - 1, 0))
    state, hparams = create_state(config, forward, variables, strat.phases[phase],
                                  num_classes=num_classes, loaded=loaded, anchor=anchor)
    state = jax.device_put(state, replicated)
    if latest is not None:
      state = checkpoint.restore(mgr, state, train_iter)
      log(f"resumed from {workdir} at step {int(jax.device_get(state.step))}")
    start = int(jax.device_get(state.step))
    # The final evaluation (test/...) is redone by every run that reaches the end.
    writer = writers.MetricWriter(workdir, resume_step=start, redo=("test",))
    resources.callback(writer.close)
    # A resumed run's summary covers what it validated before its checkpoint too.
    validation = Validation({"val": splits.get("val"),
                             **(adaptation.evaluations() if adaptation else {})}, writer.kept)
    if jax.process_index() == 0:
      writers.write_atomic(os.path.join(workdir, "config.json"),
                           config.to_json_best_effort(indent=2))
    train_step_fn = jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))
    eval_step_fn = jax.jit(eval_step, out_shardings=replicated)

    # ---- Train loop -----------------------------------------------------------
    preemption = resources.enter_context(runtime.Preemption())
    t0, images_seen, first_step_s = time.time(), 0, None
    bar = tqdm(range(start + 1, config.total_steps + 1), initial=start, total=config.total_steps,
               desc="train", disable=not runtime.show_progress(config))
    for step in bar:
      if strat.phase_at(step - 1) != phase:
        phase = strat.phase_at(step - 1)
        state, hparams = switch_phase(state, config, strat.phases[phase], step - 1, loaded)
        state = state.replace(opt_state=jax.device_put(state.opt_state, replicated))
        log(f"step {step}: phase {phase} of {strat.name} "
            f"({len(state.frozen)} frozen parameter arrays)")
        writer.write(step, {"strategy/phase": phase})
      state, metrics = train_step_fn(state, put(next(train_iter)), step_rng)
      if first_step_s is None:   # Set-up, data, restore and compile: what a cache can save.
        jax.block_until_ready(state.step)
        first_step_s = time.time() - started
      images_seen += config.data.batch_size
      is_last = step == config.total_steps
      due_ckpt = step % config.checkpoint_every == 0 or is_last
      if step % config.log_every == 0 or due_ckpt or preemption.requested:
        _log_step(writer, bar, config, step, jax.device_get(metrics), hparams,
                  images_seen / (time.time() - t0), mgr, workdir)
      if is_last or (config.eval_every and step % config.eval_every == 0):
        validation.run(eval_step_fn, state, config, put, writer, step)
      if due_ckpt or preemption.requested:
        checkpoint.save(mgr, state, train_iter, force=True)
      if preemption.requested:
        raise preemption.stop(step, workdir)
    if config.total_steps == 0:   # An evaluation of config.init: validated once, untrained.
      validation.run(eval_step_fn, state, config, put, writer, 0)
    train_time = time.time() - t0

    # ---- Final evaluation -------------------------------------------------------
    # With a domain-adaptation target, test accuracy is the target's; first AdaBN (if
    # adapt.adabn) and the label-free scores, on its unlabeled train images.
    state, target_scores = (adapt_to_target(config, state, adaptation, replicated)
                            if adaptation else (state, {}))
    test_split = adaptation.splits["test"] if adaptation else splits["test"]
    test = evaluate(eval_step_fn, state, test_split, config, put)
    labeled_test = None
    if adaptation:   # The labeled domain's own test split, beside the target's.
      labeled_test = evaluate(eval_step_fn, state, splits["test"], config, put)
      writer.write(config.total_steps, {f"test_source/{k}": v for k, v in labeled_test.items()})
    extra = {name: evaluate(eval_step_fn, state, split, config, put)
             for name, split in extra_tests.items()}
    for name, result in extra.items():
      writer.write(config.total_steps, {f"test_extra/{name}/{k}": v for k, v in result.items()})
    summary = summarize(config, workdir, state, test, extra=extra, validation=validation,
                        adaptation=adaptation, labeled_test=labeled_test,
                        train_examples=len(splits["train"]), test_examples=len(test_split),
                        timing=(train_time, started, first_step_s, images_seen), strat=strat,
                        cached_from=cached_from, skipped=skipped) | target_scores
    writer.write(config.total_steps, {f"test/{k}": v for k, v in test.items()})
    if jax.process_index() == 0:
      writers.write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _log_step(writer, bar, config, step, metrics, hparams, speed, mgr, workdir) -> None:
  """One step's metrics and each label's lr to the log and the bar; a NaN loss stops here."""
  if not np.isfinite(metrics["total_loss"]):   # The data term and every added term.
    good = mgr.latest_step()
    raise FloatingPointError(
        f"loss became {metrics['total_loss']} at step {step}; stopped. The last good checkpoint "
        f"({'step ' + str(good) if good is not None else 'none yet'}) is kept in "
        f"{os.path.join(workdir, checkpoint.CHECKPOINTS)}.")
  # Each label's lr as its optimizer applies it at this step (optax counts from 0).
  lrs = {label: float(h.lr(step - 1)) for label, h in hparams.items()}
  writer.write(step, {f"train/{k}": v for k, v in metrics.items()} | {
      f"train/lr/{label}": v for label, v in lrs.items()} | {"train/images_per_sec": speed})
  runtime.progress(bar, config, step, metrics, max(lrs.values(), default=0.0), speed)


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
    log(f"left out {len(skipped)} undecodable image(s); listed in "
        f"{os.path.join(workdir, data.SKIPPED_FILE)}")
  return len(skipped)


def as_built(config, arch: dict):
  """With model "auto", a copy of `config` whose model.small_stem and model.width are the
  checkpoint's (model.json holds the rest), so config.json says what ran; else `config`."""
  if config.model.name != "auto":
    return config
  config = config.copy_and_resolve_references()
  config.model.small_stem = bool(arch.get("small_stem", config.model.small_stem))
  config.model.width = float(arch.get("width", config.model.width))
  return config


def _write_model_json(workdir, config, built, num_classes, class_names):
  """What a later transfer or `predict` needs to rebuild and feed this model."""
  if jax.process_index() != 0:
    return
  meta = {"model": {**built.arch, "dtype": config.model.dtype, "num_classes": num_classes},
          "class_names": list(class_names),
          "data": {"image_size": config.data.image_size, "channels": config.data.channels,
                   "mean": list(built.mean), "std": list(built.std)}}
  writers.write_atomic(os.path.join(workdir, checkpoint.MODEL_JSON), json.dumps(meta, indent=2))
