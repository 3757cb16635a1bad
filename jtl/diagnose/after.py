"""What a strategy did to the network: per-cell diagnostics after training.

For a finished run's workdir, against the source it started from (config.init):
  - weight drift per stage, ‖θ − θ_source‖ / ‖θ_source‖ (exactly 0 for a frozen stage;
    parameters not loaded from the source, config.dont_load, are left out), and the same
    for the BatchNorm running statistics, which move with no gradient;
  - linear CKA per layer between the source's and the trained model's features on a
    fixed probe batch (the first PROBE images of the target's test split);
  - features.png: the pre-logit features of target and source-domain images, before
    (source model) and after (trained model) transfer, projected to 2-D by PCA and
    t-SNE (scikit-learn), colored by class and by domain.
Written to DIAGNOSTICS and PICTURE in the workdir. `jtl sweep STUDY.py --diagnose`
does this for every transfer cell, and `jtl report` tabulates and plots it.

>>> result = diagnose_run("runs/strategy_ablation/target/shots=10,...,seed=0")  # doctest: +SKIP
>>> result["drift"]["stem"], result["cka"]["stem"]
(0.0, 1.0)
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np

from jtl import adapt, data, models
from jtl import workdir as workdir_lib
from jtl.diagnose import features, similarity
from jtl.results import DIAGNOSTICS   # diagnostics.json

PICTURE = "features.png"
PROBE = 256            # Images per domain in the fixed probe batch.


def _config(workdir: str):
  """The run's config (workdir.stored_config: a run older than a field gets its default)."""
  stored = workdir_lib.stored_config(workdir)
  if stored is None:
    raise FileNotFoundError(f"{os.path.join(workdir, workdir_lib.CONFIG_JSON)} does not exist; "
                            "expected the workdir of a finished jtl run.")
  return ml_collections.ConfigDict(stored)


def _named(name: str, classes) -> str:
  return f"{name} {list(classes)}" if classes else name


def domains(config) -> list[tuple[str, object]]:
  """(label, test split) of the domains to picture, the one the run is evaluated on first.

  A transfer run: its data (the target), then the data the source was trained on when
  config.init is a jtl run whose data is here. A domain-adaptation run: adapt.target (the
  target, evaluated), then its labeled data (the source domain)."""
  def test_split(name, data_dir, classes):
    return data.make_splits({"name": name, "data_dir": data_dir, "classes": classes,
                             "val_per_class": 0}, seed=0)["test"]
  here = test_split(config.data.name, config.data.data_dir, config.data.classes)
  labeled = _named(config.data.name, config.data.classes)
  if config.adapt.target:
    return [(f"target: {_named(config.adapt.target, config.data.classes)}",
             test_split(config.adapt.target, config.data.data_dir, config.data.classes)),
            (f"source (labeled): {labeled}", here)]
  out = [(f"target: {labeled}", here)]
  if config.init and os.path.exists(os.path.join(config.init, "config.json")):
    try:
      src = _config(config.init).data
      out.append((f"source: {_named(src.name, src.classes)}",
                  test_split(src.name, src.data_dir, src.classes)))
    except (OSError, ValueError, KeyError):
      pass     # The source's data is not on this machine: the target domain alone.
  return out


def diagnose_run(workdir: str, *, probe: int = PROBE, picture: bool = True, tsne: bool = True
                 ) -> dict:
  """Drift and CKA per stage (and features.png) for the run in `workdir`; writes and returns
  DIAGNOSTICS' content. A run without a source (scratch) gets the picture alone. CKA uses the
  first `probe` test images of the domain the run is evaluated on."""
  t0 = time.time()
  config = _config(workdir)
  trained = features.load_model(workdir, config)
  has_source = bool(config.init) and config.strategy.name != "scratch"
  source = features.load_model(config.init, config) if has_source else None
  shown = domains(config)
  target = shown[0][1]
  result = {"probe_examples": min(probe, len(target)), "source": config.init or None}
  if source is not None:
    skip = (*config.dont_load, f"{adapt.HEAD}/.*")
    result["drift"] = similarity.weight_drift(trained.variables["params"],
                                              source.variables["params"], skip)
    # BatchNorm's running statistics move with no gradient, whatever the lr.
    result["bn_drift"] = similarity.weight_drift(trained.variables["batch_stats"],
                                                 source.variables["batch_stats"], skip)
    before = features.extract(source, target, config, pool=False, limit=probe)
    after = features.extract(trained, target, config, pool=False, limit=probe)
    result["cka"] = {layer: similarity.linear_cka(before[layer], after[layer])
                     for layer in models.LAYERS}
  if picture:
    result["picture"] = PICTURE
    _picture(os.path.join(workdir, PICTURE), config, trained, source, shown, probe, tsne)
  result["seconds"] = time.time() - t0
  with open(os.path.join(workdir, DIAGNOSTICS), "w") as f:
    json.dump(result, f, indent=2)
  return result


def _pca(x: np.ndarray) -> np.ndarray:
  # "full": an exact SVD; "auto" picks a randomized one for a 512 x 512 probe.
  from sklearn.decomposition import PCA
  return PCA(2, svd_solver="full").fit_transform(x)


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
  from sklearn.manifold import TSNE
  return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed
              ).fit_transform(x)


def _picture(path, config, trained, source, shown, probe, tsne) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  models_ = [("before (source)", source), ("after (trained)", trained)]
  models_ = [(name, m) for name, m in models_ if m is not None]
  projections = [("PCA", _pca)] + ([("t-SNE", lambda x: _tsne(x, config.seed))] if tsne else [])
  fig, axes = plt.subplots(len(models_), 2 * len(projections), squeeze=False,
                           figsize=(4 * 2 * len(projections), 3.6 * len(models_)))
  for row, (when, model) in enumerate(models_):
    feats, classes, doms = [], [], []
    for d, (name, split) in enumerate(shown):
      out = features.extract(model, split, config, layers=("pre_logits",), limit=probe)
      feats.append(out["pre_logits"])
      names = getattr(split, "class_names", None) or []
      classes += [f"{names[y] if y < len(names) else y}" for y in out["labels"]]
      doms += [d] * len(out["labels"])
    x = np.concatenate(feats).astype(np.float64)
    labels = sorted(set(classes))
    class_ids = np.array([labels.index(c) for c in classes])
    for col, (pname, project) in enumerate(projections):
      xy = project(x)
      for k, (colors, legend, title) in enumerate((
          (class_ids, labels, "by class"), (np.array(doms), [n for n, _ in shown], "by domain"))):
        ax = axes[row, 2 * col + k]
        cmap = plt.get_cmap("tab20" if len(legend) > 10 else "tab10")
        for i, lab in enumerate(legend):
          m = colors == i
          ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(i % cmap.N), label=lab, alpha=0.7)
        ax.set_title(f"{when}: {pname}, {title}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
        if row == 0:
          ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2 if len(legend) > 6 else 1)
  fig.suptitle(f"pre-logit features, {os.path.basename(os.path.dirname(path))}: "
               f"{config.strategy.name}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  from PIL import Image   # A 64-colour palette: a quarter of the bytes, the same picture.
  with Image.open(path) as im:
    small = im.convert("RGB").quantize(64)
  small.save(path, optimize=True)
