"""Property-based tests (hypothesis): the rule matcher, the k-shot sampler, the corruptions.

Each property is checked against a direct restatement of what the function
promises (a plain re.fullmatch loop, per-class counts), on random small inputs.
hypothesis keeps failing examples in .hypothesis/ (which ignores itself in git).
"""

import re

import flax.traverse_util as tu
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jtl import strategy
from jtl.data.shift import CORRUPTIONS, corrupt
from jtl.data.splits import k_shot

BOUNDED = settings(max_examples=50, deadline=None)

# ---- Strategy rules -------------------------------------------------------------------
PATHS = sorted(
    ["stem/conv/kernel", "stem/bn/scale", "stem/bn/bias", "head/kernel", "head/bias"]
    + [f"stage{n}/block{m}/conv{k}/kernel" for n in range(1, 5) for m in range(3)
       for k in range(1, 4)]
    + [f"stage{n}/block{m}/bn{k}/{leaf}" for n in range(1, 5) for m in range(2)
       for k in (1, 2) for leaf in ("scale", "bias")])
# Broad, narrow, overlapping, prefix-only ("stage1") and never-matching regexes.
REGEXES = (["head/.*", ".*/kernel", ".*/bias", r".*/bn\d/.*", "stem/.*", r"stage[12]/.*",
            ".*conv2.*", "absent/.*", "stage1"]
           + [f"stage{n}/.*" for n in range(1, 5)]
           + [f"stage{n}/block{m}/.*" for n in range(1, 5) for m in range(3)])
LABELS = (strategy.FREEZE, strategy.TRAIN, "fast")

param_trees = st.sets(st.sampled_from(PATHS), min_size=1, max_size=12)
rule_lists = st.lists(st.tuples(st.sampled_from(REGEXES), st.sampled_from(LABELS)),
                      min_size=0, max_size=6)


def tree(paths):
  return tu.unflatten_dict({tuple(p.split("/")): np.zeros(1) for p in paths})


def first_match(rules, paths):
  """path -> index of the first rule that fully matches it (absent: none does)."""
  out = {}
  for path in paths:
    for i, (regex, _) in enumerate(rules):
      if re.fullmatch(regex, path):
        out[path] = i
        break
  return out


def with_catch_all(rules, label):
  return list(rules) + [(".*", label)]


@BOUNDED
@given(param_trees, rule_lists, st.sampled_from(LABELS))
def test_first_full_match_wins_and_freeze_is_frozen(paths, rules, last):
  rules = with_catch_all(rules, last)
  first = first_match(rules, paths)
  used = sorted(set(first.values()))
  rules = [rules[i] for i in used]  # A rule no path reaches first changes no label.
  expected = {p: rules[used.index(i)][1] for p, i in first.items()}
  labels = strategy.assign_labels(rules, tree(paths))
  assert tu.flatten_dict(labels, sep="/") == expected
  assert strategy.frozen_paths(labels) == {p for p, l in expected.items() if l == strategy.FREEZE}


@BOUNDED
@given(param_trees, rule_lists, st.sampled_from(LABELS))
def test_rules_that_match_nothing_are_named(paths, rules, last):
  rules = with_catch_all(rules, last)  # Everything is covered: only unused rules can fail.
  used = set(first_match(rules, paths).values())
  unused = [regex for i, (regex, _) in enumerate(rules) if i not in used]
  assume(unused)
  with pytest.raises(ValueError) as info:
    strategy.assign_labels(rules, tree(paths))
  named = re.fullmatch(r"strategy rule\(s\) (.*) match no parameter .*", str(info.value))
  assert named and named[1] == ", ".join(map(repr, unused)), str(info.value)


@BOUNDED
@given(param_trees, rule_lists)
def test_uncovered_paths_are_named(paths, rules):
  uncovered = set(paths) - set(first_match(rules, paths))
  assume(uncovered)
  with pytest.raises(ValueError) as info:
    strategy.assign_labels(rules, tree(paths))
  named = re.fullmatch(r"no strategy rule covers (\d+) parameter\(s\): (.*?)( …)?; add a rule .*",
                       str(info.value))
  assert named and int(named[1]) == len(uncovered), str(info.value)
  shown, key = named[2].split(", "), strategy.model_order
  assert set(shown) <= set(uncovered) and len(shown) == min(len(uncovered), 8)
  assert shown == sorted(shown, key=key)  # In forward order, the first eight of them.
  assert all(key(p) >= key(shown[-1]) for p in set(uncovered) - set(shown))


# ---- k-shot draws -----------------------------------------------------------------------
@st.composite
def labelled(draw, min_count=0):
  """(labels, num_classes, per-class counts): labels shuffled, every class min_count.. 12."""
  counts = draw(st.lists(st.integers(min_count, 12), min_size=1, max_size=5))
  labels = np.repeat(np.arange(len(counts)), counts)
  order = draw(st.permutations(range(len(labels))))
  return labels[np.asarray(order, np.int64)], len(counts), counts


seeds = st.one_of(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(0, 99), min_size=1,
                                                          max_size=3))


def per_class(labels, idx, num_classes):
  return [set(idx[labels[idx] == c].tolist()) for c in range(num_classes)]


@BOUNDED
@given(labelled(min_count=6), st.integers(1, 6), seeds)
def test_k_shot_draws_exactly_shots_per_class(data, shots, seed):
  labels, num_classes, _ = data
  idx = k_shot(labels, shots, seed, num_classes=num_classes)
  assert idx.size == shots * num_classes and idx.size == np.unique(idx).size
  assert np.all(np.diff(idx) > 0) and (idx.size == 0 or 0 <= idx.min() <= idx.max() < len(labels))
  assert np.bincount(labels[idx], minlength=num_classes).tolist() == [shots] * num_classes
  np.testing.assert_array_equal(k_shot(labels, shots, seed, num_classes=num_classes), idx)


@BOUNDED
@given(labelled(min_count=7), st.integers(1, 6), seeds)
def test_k_shot_draws_are_nested(data, shots, seed):
  labels, num_classes, _ = data
  smaller = k_shot(labels, shots, seed, num_classes=num_classes)
  larger = k_shot(labels, shots + 1, seed, num_classes=num_classes)
  for few, more in zip(per_class(labels, smaller, num_classes),
                       per_class(labels, larger, num_classes)):
    assert few < more and len(more) == len(few) + 1


@BOUNDED
@given(labelled(), st.integers(1, 13), seeds, st.booleans())
def test_k_shot_names_the_first_class_short_of_shots(data, shots, seed, named):
  labels, num_classes, counts = data
  short = [c for c, n in enumerate(counts) if n < shots]
  assume(short)
  names = [f"kind{c}" for c in range(num_classes)] if named else None
  with pytest.raises(ValueError) as info:
    k_shot(labels, shots, seed, num_classes=num_classes, class_names=names)
  who = f"class 'kind{short[0]}'" if named else f"class {short[0]}"
  assert str(info.value).startswith(f"{who} has {counts[short[0]]} training examples"), \
      str(info.value)
  assert f"fewer than shots={shots}" in str(info.value)


# ---- Corruptions -------------------------------------------------------------------------
images = st.tuples(st.integers(4, 40), st.integers(4, 40), st.sampled_from((1, 3))).flatmap(
    lambda shape: arrays(np.uint8, shape))
names = st.sampled_from(sorted(CORRUPTIONS))


@BOUNDED
@given(images, names, st.integers(0, 5), st.integers(0, 2 ** 32 - 1))
def test_corruption_keeps_shape_and_dtype_and_repeats_for_a_seed(image, name, severity, seed):
  before = image.copy()
  out = corrupt(image, name, severity, np.random.default_rng(seed))
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(image, before)  # The input is not written to.
  np.testing.assert_array_equal(corrupt(image, name, severity, np.random.default_rng(seed)), out)
  if severity == 0:
    np.testing.assert_array_equal(out, image)


@BOUNDED
@given(images, st.integers(1, 5), st.integers(1, 5), st.integers(0, 2 ** 32 - 1))
def test_invert_is_an_involution(image, first, second, seed):
  rng = np.random.default_rng(seed)
  twice = corrupt(corrupt(image, "invert", first, rng), "invert", second, rng)
  np.testing.assert_array_equal(twice, image)
