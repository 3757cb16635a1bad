"""Strategies: frozen parameters never move and hold no state; phases switch on time."""

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import checkpoint, models, optim, strategy, train, writers
from jtl.config import base_config

from jtl.models import build as model_build
from test_train import tiny_config

SINGLE_PHASE = ["linear_probe", "full_finetune", "scratch", "partial:0", "partial:2",
                "freeze_through:stage2/block1", "surgical:stage3", "discriminative",
                "bitfit", "norm_only"]
MEAN, STD = (0.5,), (0.5,)


def tiny_model():
  model = models.get_model("resnet18", num_classes=3, small_stem=True, width=0.125)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  return model, variables["params"], variables["batch_stats"]


MODEL, PARAMS, STATS = tiny_model()
FORWARD = model_build.forward(MODEL, MEAN, STD)


def config_for(name, **reg):
  c = base_config()
  c.strategy.name = name
  c.total_steps = 6
  c.optim.update(name="momentum", lr=0.05, weight_decay=5e-4, warmup_steps=0, schedule="constant")
  c.reg.update(reg)
  return c


def make_state(config, phase=0, source=None):
  strat = strategy.resolve(config.strategy, PARAMS, config.total_steps)
  loaded = frozenset(strategy.param_paths(PARAMS)) - {"head/kernel", "head/bias"}
  state, _ = train.create_state(config, FORWARD, {"params": PARAMS, "batch_stats": STATS},
                                strat.phases[phase], num_classes=3, loaded=loaded, anchor=source)
  return state, strat


def batch(seed=0, n=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          "label": rng.integers(0, 3, n).astype(np.int32)}


def run_steps(state, steps=3, same_batch=False):
  step = jax.jit(train.train_step)
  metrics = None
  for i in range(steps):
    state, metrics = step(state, batch(0 if same_batch else i), jax.random.key(0))
  return state, metrics


def flat(tree):
  return tu.flatten_dict(jax.device_get(tree), sep="/")


@pytest.mark.parametrize("name", SINGLE_PHASE + ["gradual_unfreeze", "lp_ft"])
def test_frozen_parameters_and_statistics_stay_bit_identical(name):
  state, strat = make_state(config_for(name))
  labels = flat(strat.phases[0].labels)
  end, _ = run_steps(state)
  before, after = flat(PARAMS), flat(end.params)
  frozen = [p for p, l in labels.items() if l == strategy.FREEZE]
  assert frozen or name in ("full_finetune", "scratch", "discriminative")
  for path, label in labels.items():
    same = np.array_equal(before[path], after[path])
    assert same == (label == strategy.FREEZE), f"{name}: {path} ({label})"
  stats_before, stats_after = flat(STATS), flat(end.batch_stats)
  trained_stages = set(strategy.bn_train_stages(strat.phases[0].labels))
  for path in stats_before:
    same = np.array_equal(stats_before[path], stats_after[path])
    assert same == (models.stage_of(path) not in trained_stages), f"{name}: {path}"


def test_linear_probe_optimizer_state_holds_only_the_head():
  state, _ = make_state(config_for("linear_probe"))
  arrays = [(jax.tree_util.keystr(p), v) for p, v in
            jax.tree_util.tree_leaves_with_path(state.opt_state) if np.ndim(v) > 0]
  assert arrays and all("'head'" in path for path, _ in arrays)
  per_label = optim.state_bytes_per_label(state.opt_state)
  head = sum(np.size(v) for k, v in flat(PARAMS).items() if k.startswith("head/"))
  assert per_label == {"freeze": 0, "train": head * 4}  # One float32 momentum per head value.


def test_presets_differ_only_in_their_rules():
  s = strategy.resolve(config_for("partial:2").strategy, PARAMS, 6)
  labels = flat(s.phases[0].labels)
  assert {models.stage_of(p) for p, l in labels.items() if l == strategy.FREEZE} == {
      "stem", "stage1", "stage2"}
  d = strategy.resolve(config_for("discriminative").strategy, PARAMS, 6).phases[0]
  assert d.lr_mult == {"head": 1.0, "stage4": 0.5, "stage3": 0.25, "stage2": 0.125,
                       "stage1": 0.0625, "stem": 0.03125}
  f = strategy.resolve(config_for("freeze_through:stage2/block0").strategy, PARAMS, 6).phases[0]
  frozen = {p for p, l in flat(f.labels).items() if l == strategy.FREEZE}
  assert "stage2/block0/downsample/bn/bias" in frozen and "stage2/block1/conv1/kernel" not in frozen
  assert "stage1/block1/conv2/kernel" in frozen


@pytest.mark.parametrize("rules, message", [
    ((("head/.*", "train"),), "no strategy rule covers"),
    ((("head/.*", "train"), ("stage9/.*", "freeze"), (".*", "freeze")), "'stage9/.*' match no parameter"),
])
def test_bad_rules_fail_naming_them(rules, message):
  c = config_for("full_finetune")
  c.strategy.rules = rules
  with pytest.raises(ValueError, match=message) as info:
    strategy.resolve(c.strategy, PARAMS, 6)
  if "covers" in message:
    assert "stem/conv/kernel" in str(info.value)


@pytest.mark.parametrize("name, message", [
    ("fine_tune_everything", "unknown strategy 'fine_tune_everything'"),
    ("partial", "needs an argument"), ("surgical:stage7", "'stage7' is not a stage"),
    ("freeze_through:stage9", "no parameter path is or starts with 'stage9'")])
def test_unknown_or_malformed_presets_fail_naming_them(name, message):
  with pytest.raises(ValueError, match=message):
    strategy.resolve(config_for(name).strategy, PARAMS, 6)


@pytest.mark.slow   # Trains twice, among the fast tier's slowest; it keeps the penalty arithmetic tests.
def test_l2_sp_pulls_toward_the_source_weights():
  source = jax.tree.map(np.array, {"params": PARAMS, "batch_stats": STATS})
  plain_cfg = config_for("full_finetune")
  plain_cfg.optim.update(name="sgd", lr=1e-3, weight_decay=0.0)
  # lr * coefficient = 1: each step pulls a parameter all the way back to the source
  # value before the data gradient moves it again, so drift cannot accumulate.
  run = lambda c, n=10: run_steps(make_state(c, source=source)[0], steps=n, same_batch=True)
  (plain, _), (zero, _) = run(plain_cfg), run(_with(plain_cfg, l2_sp=0.0))
  pulled, metrics = run(_with(plain_cfg, l2_sp=1e3))
  one_step, _ = run(plain_cfg, n=1)
  src, p0, pz, pp = flat(PARAMS), flat(plain.params), flat(zero.params), flat(pulled.params)
  body = [k for k in src if not k.startswith("head/")]
  for k in src:
    np.testing.assert_array_equal(p0[k], pz[k])  # l2_sp=0 is plain fine-tuning.
  drift = lambda p: np.sqrt(sum(np.square(p[k] - src[k]).sum() for k in body))
  first = drift(flat(one_step.params))
  assert drift(p0) > 2.5 * first      # Plain fine-tuning walks away from the source ...
  assert drift(pp) < 1.5 * first    # ... L2-SP stays within about one step of it.
  assert float(metrics["penalty/l2_sp"]) > 0


def _with(config, **reg):
  c = config.copy_and_resolve_references()
  c.reg.update(reg)
  return c


def test_penalties_are_logged_as_separate_terms():
  source = jax.tree.map(np.array, {"params": PARAMS, "batch_stats": STATS})
  c = config_for("full_finetune", l1=1e-5, l2=1e-4, delta=0.1, bss=0.01, bss_k=2)
  _, metrics = run_steps(make_state(c, source=source)[0], steps=1)
  for term in ("l1", "l2", "delta", "bss"):
    assert np.isfinite(metrics[f"penalty/{term}"]) and metrics[f"penalty/{term}"] > 0, term
  penalties = sum(float(metrics[f"penalty/{t}"]) for t in ("l1", "l2", "delta", "bss"))
  assert float(metrics["total_loss"]) == pytest.approx(float(metrics["loss"]) + penalties, rel=1e-5)


def test_l2_sp_beta_alone_needs_no_source():
  _, metrics = run_steps(make_state(config_for("full_finetune", l2_sp_beta=0.1))[0], steps=1)
  head = sum(np.square(v).sum() for k, v in flat(PARAMS).items() if k.startswith("head/"))
  assert float(metrics["penalty/l2_sp"]) == pytest.approx(0.05 * head, rel=1e-5)


def test_l2_sp_without_a_source_is_refused():
  with pytest.raises(ValueError, match="reg.l2_sp and reg.delta pull toward the source"):
    make_state(config_for("full_finetune", l2_sp=0.1), source=None)


def test_transplant_keeps_the_state_of_parameters_that_stay_trainable():
  c = config_for("lp_ft")
  state, strat = make_state(c)
  state, _ = run_steps(state, steps=2)
  new, _ = train.phase_fields(c, FORWARD, strat.phases[1])
  moved = optim.transplant(state.opt_state, new["tx"].init(state.params), step=2)
  def trace(opt_state, param):  # The momentum buffer of one parameter.
    suffix = "".join(f"['{k}']" for k in param.split("/"))
    return [v for p, v in jax.tree_util.tree_leaves_with_path(opt_state)
            if ".trace" in jax.tree_util.keystr(p) and jax.tree_util.keystr(p).endswith(suffix)]
  [old_head], [new_head] = trace(state.opt_state, "head/kernel"), trace(moved, "head/kernel")
  np.testing.assert_array_equal(old_head, new_head)
  assert np.abs(old_head).max() > 0
  assert trace(state.opt_state, "stage4/block1/conv2/kernel") == []   # Frozen: no state ...
  [new_body] = trace(moved, "stage4/block1/conv2/kernel")
  assert not np.any(new_body)                                          # ... then starts at zero.


def _moved_between_checkpoints(workdir, steps):
  """For consecutive checkpoints, the stages whose parameters changed."""
  params = {s: flat(checkpoint.load_model(workdir, s)[0]) for s in steps}
  out = []
  for a, b in zip(steps, steps[1:]):
    out.append({models.stage_of(k) for k in params[a] if not np.array_equal(params[a][k], params[b][k])})
  return out


@pytest.mark.slow
def test_lp_ft_switches_phase_at_the_configured_step(tmp_path, monkeypatch):
  traces = []
  real = train.train_step
  monkeypatch.setattr(train, "train_step", lambda *a: (traces.append(1), real(*a))[1])
  c = tiny_config(**{"strategy.name": "lp_ft", "strategy.lp_steps": 2, "total_steps": 4,
                     "checkpoint_every": 1, "keep_checkpoints": 10})
  train.train_and_evaluate(c, str(tmp_path))
  moved = _moved_between_checkpoints(str(tmp_path), [1, 2, 3, 4])
  assert moved[0] == {"head"}                                     # step 2: linear probe
  assert moved[1] == moved[2] == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
  assert len(traces) == 2  # One compile per phase.
  # The logged lr is base lr x the phase's multiplier x the schedule, label by label.
  base = optim.make_schedule(c.optim, c.total_steps)
  rows = {r["step"]: r for r in writers.read_metrics(str(tmp_path)) if "train/loss" in r}
  for step, mult in [(1, 1.0), (2, 1.0), (3, 0.1), (4, 0.1)]:
    assert rows[step]["train/lr/train"] == pytest.approx(float(base(step - 1)) * mult, rel=1e-6)
    assert "train/lr/freeze" not in rows[step]


@pytest.mark.slow
def test_discriminative_logs_each_stage_lr(tmp_path):
  c = tiny_config(**{"strategy.name": "discriminative:0.5", "total_steps": 3,
                     "optim.schedule": "warmup_cosine", "optim.warmup_steps": 1})
  train.train_and_evaluate(c, str(tmp_path))
  base = optim.make_schedule(c.optim, c.total_steps)
  rows = [r for r in writers.read_metrics(str(tmp_path)) if "train/loss" in r]
  assert len(rows) == 3
  for r in rows:
    for k, stage in enumerate(["head", "stage4", "stage3", "stage2", "stage1", "stem"]):
      assert r[f"train/lr/{stage}"] == pytest.approx(float(base(r["step"] - 1)) * 0.5 ** k,
                                                     rel=1e-6)
  assert rows[-1]["train/lr/stem"] > 0


@pytest.mark.slow
def test_gradual_unfreeze_adds_one_stage_per_phase_top_down(tmp_path):
  c = tiny_config(**{"strategy.name": "gradual_unfreeze", "strategy.unfreeze_every": 1,
                     "total_steps": 7, "checkpoint_every": 1, "keep_checkpoints": 10})
  train.train_and_evaluate(c, str(tmp_path))
  moved = _moved_between_checkpoints(str(tmp_path), list(range(1, 8)))
  # Step k+1 runs phase k (head + the top k stages).
  expected = [{"head", "stage4"}, {"head", "stage4", "stage3"},
              {"head", "stage4", "stage3", "stage2"},
              {"head", "stage4", "stage3", "stage2", "stage1"},
              {"head", "stage4", "stage3", "stage2", "stage1", "stem"},
              {"head", "stage4", "stage3", "stage2", "stage1", "stem"}]
  assert moved == expected


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_skips_norms_and_biases_unless_asked(decay_all):
  c = config_for("norm_only")   # Trains head and BatchNorm scales/offsets.
  c.optim.update(name="sgd", weight_decay=0.5, decay_all=decay_all)
  labels = strategy.resolve(c.strategy, PARAMS, 6).phases[0].labels
  tx, _ = optim.make_optimizer(c.optim, labels, 6)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates = flat(tx.update(zeros, tx.init(PARAMS), PARAMS)[0])
  assert np.any(updates["head/kernel"])
  assert np.any(updates["stage4/block1/bn2/scale"]) == decay_all
  assert not np.any(updates["stage4/block1/conv2/kernel"])  # Frozen: never decayed.


@pytest.mark.parametrize("rules, expected", [
    ((("head/.*", "train"), (".*", "frozen")), "label 'frozen' \\(did you mean 'freeze'\\?\\)"),
    (("head:train",), "must be \\(regex, label\\) pairs"),
    ((("head/.*", "train"), ("(", "freeze")), "does not compile"),
])
def test_custom_rules_with_an_undeclared_label_or_a_bad_shape_are_refused(rules, expected):
  c = config_for("full_finetune")
  c.strategy.rules = rules
  with pytest.raises(ValueError, match=expected):
    strategy.resolve(c.strategy, PARAMS, 6)


def test_a_label_declared_with_an_lr_multiplier_is_accepted():
  c = config_for("full_finetune")
  c.strategy.rules = (("head/.*", "fast"), (".*", "freeze"))
  c.strategy.lr_mult.fast = 10.0
  strat = strategy.resolve(c.strategy, PARAMS, 6)
  assert strat.phases[0].labels["head"]["kernel"] == "fast"
