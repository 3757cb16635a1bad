"""Diagnostics: CKA and weight drift, per-cell diagnostics of a real partial:2 run, the
transferability table (reading the prefix cache) and the recommendation's rule."""

import json
import os

import numpy as np
import pytest

from jtl import report, train
from jtl.diagnose import after, estimate, recommend, similarity, transferability

from test_train import tiny_config

RNG = np.random.default_rng(0)


def test_cka_is_one_for_identical_features_and_invariant_to_scale_and_rotation():
  x = RNG.normal(size=(100, 20))
  q, _ = np.linalg.qr(RNG.normal(size=(20, 20)))
  assert similarity.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
  assert similarity.linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
  assert similarity.linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
  assert similarity.linear_cka(x, x @ q + 5.0) == pytest.approx(1.0, abs=1e-12)  # Centred.
  # A feature map of another width (the same information, padded) compares too.
  assert similarity.linear_cka(x, np.concatenate([x @ q, np.zeros((100, 5))], 1)) == \
      pytest.approx(1.0, abs=1e-12)
  unrelated = similarity.linear_cka(x, RNG.normal(size=(100, 20)))
  partly = similarity.linear_cka(x, x + 2 * RNG.normal(size=(100, 20)))
  assert unrelated < partly < 0.99 and unrelated < 0.35
  # Convolutional features (n, h, w, c) are flattened; a per-channel rescale is not isotropic.
  conv = RNG.normal(size=(50, 4, 4, 3))
  assert similarity.linear_cka(conv, 2 * conv) == pytest.approx(1.0)
  assert similarity.linear_cka(conv, conv * np.array([1.0, 5.0, 0.1])) < 0.99
  with pytest.raises(ValueError, match="same examples"):
    similarity.linear_cka(x, x[:50])


def test_weight_drift_per_stage_on_a_small_tree():
  source = {"stem": {"conv": {"kernel": np.ones((2, 2))}},
            "stage3": {"block0": {"kernel": np.full((2,), 2.0), "bias": np.zeros(2)}},
            "head": {"kernel": np.ones((3, 2))}}
  params = {"stem": {"conv": {"kernel": np.ones((2, 2))}},
            "stage3": {"block0": {"kernel": np.array([2.0, 3.0]), "bias": np.ones(2)}},
            "head": {"kernel": np.zeros((3, 2))}}
  drift = similarity.weight_drift(params, source, skip=("head/.*",))
  assert drift == {"stem": 0.0, "stage3": pytest.approx(np.sqrt(1 + 2) / np.sqrt(8))}
  assert similarity.weight_drift(params, source)["head"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, source_run):
  """A partial:2 transfer from the tiny source run, its frozen prefix in a fresh cache."""
  root = tmp_path_factory.mktemp("diagnose")
  config = tiny_config(**{"init": source_run, "strategy.name": "partial:2", "total_steps": 4,
                          "data.classes": (5, 6, 7, 8, 9), "data.val_per_class": 4})
  transfer = str(root / "transfer")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JTL_PREFIX_CACHE", str(root / "cache"))
    summary = train.train_and_evaluate(config, transfer)
    assert summary["prefix_cached_through"] == "stage2"
    yield source_run, transfer, config


@pytest.mark.slow
def test_partial2_run_has_zero_drift_exactly_where_frozen(runs):
  _, transfer, _ = runs
  result = after.diagnose_run(transfer, probe=64, tsne=False)
  assert [result["drift"][s] for s in ("stem", "stage1", "stage2")] == [0.0, 0.0, 0.0]
  assert [result["bn_drift"][s] for s in ("stem", "stage1", "stage2")] == [0.0, 0.0, 0.0]
  assert result["drift"]["stage3"] > 0 and result["drift"]["stage4"] > 0
  assert result["bn_drift"]["stage3"] > 0
  assert "head" not in result["drift"]          # Re-initialized (dont_load), not drifted.
  for layer in ("stem", "stage1", "stage2"):    # Frozen weights and BatchNorm: the same features.
    assert result["cka"][layer] == pytest.approx(1.0, abs=1e-6)
  assert result["cka"]["pre_logits"] < 1.0
  with open(os.path.join(transfer, after.PICTURE), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(transfer, after.DIAGNOSTICS)) as f:
    assert json.load(f)["drift"] == result["drift"]
  # The report tabulates it and links the picture, copied beside RESULTS.md.
  root = os.path.dirname(transfer)
  row = {"stage": "x", "cell": "c", "strategy": "partial:2", "seed": 0, "workdir": transfer}
  lines = report.diagnostics_section(root, [row], {"compare": "strategy", "by": []})
  table = next(line for line in lines if line.startswith("| partial:2 |"))
  assert table.split(" | ")[1:4] == ["0.000"] * 3
  assert os.path.exists(os.path.join(root, report.PICTURES, "x-c.png"))
  assert os.path.exists(os.path.join(root, "diagnostics.png"))


@pytest.mark.slow
def test_estimate_scores_every_layer_and_reads_the_prefix_cache(runs, tmp_path):
  source, _, config = runs
  rows = estimate.estimate(config, [source, "random"], log=lambda _: None)
  layers = [(r["source"], r["layer"]) for r in rows]
  assert layers == [(source, layer) for layer in estimate.LAYERS] + [
      ("random", layer) for layer in estimate.LAYERS[:-1]]   # A random init has no labels.
  cached = {r["layer"] for r in rows if r["from_cache"]}
  assert cached == {"stage2"}                   # What the partial:2 run left in the cache.
  head = rows[len(estimate.LAYERS) - 1]
  assert head["leep"] is not None and rows[0]["leep"] is None
  text = estimate.table(rows)
  assert "| random | stage2 |" in text and "cache" in text
  # Recomputed without the cache, the cached layer scores the same.
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("JTL_PREFIX_CACHE", str(tmp_path))
    fresh = estimate.estimate(config, [source], ("stage2",), log=lambda _: None)[0]
  assert not fresh["from_cache"]
  stage2 = next(r for r in rows if r["layer"] == "stage2" and r["source"] == source)
  assert [fresh[n] is None for n in transferability.SCORES] == [
      stage2[n] is None for n in transferability.SCORES]
  for name in ("logme", "h_score", "ridge", "knn"):
    assert fresh[name] == pytest.approx(stage2[name], rel=1e-4, abs=1e-6), name


def _signals(src, rnd, per_class=10, val=100):
  return {"source": {l: {"ridge": a, "logme": 0.0} for l, a in zip(recommend.CUTS, src)},
          "random": {l: {"ridge": a, "logme": 0.0} for l, a in zip(recommend.CUTS, rnd)},
          "val_examples": val, "train_examples": 5 * per_class, "classes": 5}


@pytest.mark.parametrize("src, rnd, per_class, among, want", [
    # Peak at stage2, the deeper layers fall off: frozen through stage2.
    ((.6, .7, .8, .6, .5, .5), (.5,) * 6, 10, (), ("partial:2", "stage2")),
    # Peak at pre_logits: still the last stage tunes (frozen through stage3) ...
    ((.6, .7, .8, .85, .9, .9), (.5,) * 6, 10, (), ("partial:3", "stage3")),
    # ... unless the frozen features already solve the task.
    ((.6, .7, .8, .85, .99, .99), (.5,) * 6, 10, (), ("linear_probe", "pre_logits")),
    # Plenty of labels: tune everything.
    ((.6, .7, .8, .6, .5, .5), (.5,) * 6, 200, (), ("full_finetune", None)),
    # A random init clearly better: scratch; a little better is not enough.
    ((.5,) * 6, (.5, .6, .7, .8, .7, .7), 10, (), ("scratch", None)),
    ((.5, .5, .5, .5, .6, .6), (.5, .5, .5, .5, .65, .65), 10, (), ("partial:3", "stage3")),
    # Among a study's strategies: partial:3 maps to partial:2 (trains at least as much).
    ((.6, .7, .8, .85, .9, .9), (.5,) * 6, 10, ("scratch", "linear_probe", "partial:2",
                                                 "full_finetune"), ("partial:2", "stage2")),
    ((.6, .7, .8, .85, .9, .9), (.5,) * 6, 10, ("linear_probe", "lp_ft", "full_finetune"),
     ("full_finetune", None)),
])
def test_recommendation_rule(src, rnd, per_class, among, want):
  strategy, cut, why = recommend.choose(_signals(src, rnd, per_class), among)
  assert (strategy, cut) == want and why


@pytest.mark.slow
def test_lr_range_test_runs_the_trainer_with_a_rising_lr(runs):
  source, _, config = runs
  result = recommend.lr_range_test(config, "partial:2", steps=4, top=1.0)
  lrs = [lr for lr, _ in result["curve"]]
  assert len(lrs) == 4 and all(a < b for a, b in zip(lrs, lrs[1:]))
  assert lrs[0] == pytest.approx(1.0 * 1e-4) and lrs[-1] == pytest.approx(1.0)


def test_suggested_lr_is_a_tenth_of_the_lowest_smoothed_loss_before_divergence():
  lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
  # The raw minimum (0.1 at lr 1.0) is one noisy step; the smoothed curve bottoms out at 0.1.
  got = recommend.suggest_lr(lrs, [2.0, 1.5, 0.9, 0.5, 0.1, float("nan")], smoothing=0.0)
  assert got == {"lr_at_min_loss": 1.0, "lr": 0.1, "lr_range": [1 / 30, 1 / 3]}
  got = recommend.suggest_lr(lrs, [2.0, 1.5, 0.9, 0.5, 3.0, 0.05], smoothing=0.7)
  assert got["lr_at_min_loss"] == 0.1          # The late dip follows a blow-up: smoothed away.
  with pytest.raises(ValueError, match="not finite from its first step"):
    recommend.suggest_lr(lrs, [float("nan")] * 6)


def _write_cell(root, stage, cell, **diagnostics):
  folder = root / stage / cell
  folder.mkdir(parents=True)
  (folder / report.DIAGNOSTICS).write_text(json.dumps({"probe_examples": 8, **diagnostics}))


def test_report_means_diagnostics_per_strategy_over_the_cells_that_have_each_stage(tmp_path):
  rows = []
  for strategy, seed, drift in (("a", 0, {"stem": 0.0, "stage1": 0.2}), ("a", 1, {"stem": 0.0}),
                                ("b", 0, {"stem": 0.4, "stage1": 0.6}),
                                ("b", 1, {"stem": 0.2, "stage1": 0.4})):
    cell = f"strategy={strategy},seed={seed}"
    _write_cell(tmp_path, "t", cell, drift=drift, bn_drift={}, cka={"stem": 1 - drift["stem"]})
    rows.append({"stage": "t", "cell": cell, "strategy": strategy, "seed": seed,
                 "val_accuracy": 0.5})
  lines = report.diagnostics_section(str(tmp_path), rows, {"compare": "strategy", "by": []})
  table = [line for line in lines if line.startswith("| a |") or line.startswith("| b |")]
  # a's stage1 is the one cell that has it; BatchNorm drift is empty (a model without BatchNorm).
  assert table == ["| a | 0.000 | 0.200 | 1.00 |", "| b | 0.300 | 0.500 | 0.70 |"]
  assert (tmp_path / "diagnostics.png").exists()
