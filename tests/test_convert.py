"""Tests for jtl.convert: logits match the source framework, and nothing runs code.

References are built here, randomly initialized: transformers' ResNet in PyTorch
for the Hugging Face and torchvision layouts, and a BiT forward pass written
with torch.nn.functional straight from the `.npz` names (independent of
jtl.models.resnet_v2). No weights are downloaded.
"""

import json
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict

from jtl import checkpoint, convert
from jtl.convert import safe_pickle
from jtl.convert.torchvision import read_torch_file
from jtl.models import count_params, get_model
from jtl.models.resnet_v2 import get_bit_model

F = torch.nn.functional

TOL = 1e-4
HF_ARCHS = {"resnet18": dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                             layer_type="basic", num_labels=1000),
            "resnet50": dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                             layer_type="bottleneck", num_labels=10)}


def paths(tree):
  return {"/".join(k): np.asarray(v) for k, v in flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)  # NCHW


def make_hf(arch):
  """A randomly initialized HF ResNet with non-trivial BatchNorm, in eval mode."""
  torch.set_num_threads(2)
  torch.manual_seed(0)
  model = transformers.ResNetForImageClassification(transformers.ResNetConfig(**HF_ARCHS[arch]))
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0)
  return model.eval()


@pytest.fixture(scope="module")
def hf_built(tmp_path_factory, images):
  """arch -> (arch, folder written by save_pretrained, torch model, reference logits)."""
  cache = {}

  def get(arch):
    if arch not in cache:
      model = make_hf(arch)
      folder = str(tmp_path_factory.mktemp(arch))
      model.save_pretrained(folder)
      with torch.no_grad():
        cache[arch] = arch, folder, model, model(torch.from_numpy(images)).logits.numpy()
    return cache[arch]
  return get


@pytest.fixture(scope="module", params=list(HF_ARCHS))
def hf(request, hf_built):
  return hf_built(request.param)


def zeros_like_init(model, size=64):
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def jtl_logits(source, images, **kwargs):
  """Logits of jtl's model for `source`, loaded through load_into (i.e. merge)."""
  loaded = convert.load(source) if isinstance(source, str) else source
  model = convert.build_model(loaded[2])
  variables, _ = convert.load_into(zeros_like_init(model), loaded, **kwargs)
  logits, _ = jax.jit(model.apply)(variables, images.transpose(0, 2, 3, 1))
  return np.asarray(logits)


def max_diff(a, b, what):
  d = float(np.max(np.abs(a - b)))
  print(f"{what}: max abs logit diff {d:.2e} (|logits| up to {np.max(np.abs(b)):.1f})")
  return d


# ---- Hugging Face and torchvision ---------------------------------------------------
def test_hf_logits_match(hf, images):
  arch, folder, _, ref = hf
  params, _, meta = convert.load(folder)
  assert meta["model"]["name"] == arch
  assert meta["class_names"][:2] == ["LABEL_0", "LABEL_1"]  # from id2label
  assert max_diff(jtl_logits(folder, images), ref, f"hf {arch}") <= TOL


def torchvision_state(hf_model):
  """The HF model's state dict under torchvision's names, renamed by hand."""
  out = {}
  for key, value in hf_model.state_dict().items():
    k = key.replace("resnet.embedder.embedder.convolution", "conv1")
    k = k.replace("resnet.embedder.embedder.normalization", "bn1")
    k = k.replace("classifier.1", "fc")
    parts = k.split(".")
    if parts[:3] == ["resnet", "encoder", "stages"]:
      stage, block, rest = int(parts[3]) + 1, parts[5], parts[6:]
      if rest[0] == "shortcut":
        sub = "downsample.0" if rest[1] == "convolution" else "downsample.1"
      else:
        sub = ("conv" if rest[2] == "convolution" else "bn") + str(int(rest[1]) + 1)
      k = f"layer{stage}.{block}.{sub}.{rest[-1]}"
    out[k] = value.clone()
  return out


def test_torchvision_logits_match(hf, images, tmp_path):
  arch, _, model, ref = hf
  path = str(tmp_path / f"{arch}.pth")
  state = torchvision_state(model)
  assert "layer1.0.conv1.weight" in state and "fc.weight" in state
  torch.save(state, path)
  params, _, meta = convert.load(path)
  assert meta["model"]["name"] == arch and meta["class_names"][0] == "class_0"
  assert max_diff(jtl_logits(path, images), ref, f"torchvision {arch}") <= TOL


def test_safe_pickle_reads_what_torch_reads(tmp_path, monkeypatch):
  state = {"w": torch.randn(3, 4), "t": torch.randn(4, 5).t(),  # non-contiguous
           "b": torch.randn(6).to(torch.bfloat16), "n": torch.tensor(7),
           "p": torch.nn.Parameter(torch.ones(2))}
  path = str(tmp_path / "s.pth")
  torch.save(state, path)
  theirs = read_torch_file(path)
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  ours = read_torch_file(path)
  assert set(ours) == set(state)
  for k in state:
    assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape
    np.testing.assert_array_equal(ours[k].astype(np.float32), theirs[k].astype(np.float32))


def test_bf16_safetensors(tmp_path, images):
  model = make_hf("resnet18").to(torch.bfloat16)
  model.save_pretrained(str(tmp_path))
  params, batch_stats, _ = convert.load(str(tmp_path))
  assert paths(params)["stem/conv/kernel"].dtype.name == "bfloat16"
  model = model.float()  # the bf16-rounded weights, computed in float32
  w = model.state_dict()["resnet.embedder.embedder.convolution.weight"].numpy()
  np.testing.assert_array_equal(paths(params)["stem/conv/kernel"].astype(np.float32),
                                w.transpose(2, 3, 1, 0))
  with torch.no_grad():
    ref = model(torch.from_numpy(images)).logits.numpy()
  assert max_diff(jtl_logits(str(tmp_path), images), ref, "hf bf16 resnet18") <= TOL


def test_param_counts():
  def n(model):
    return count_params(jax.eval_shape(model.init, jax.random.key(0),
                                       jnp.zeros((1, 64, 64, 3)))["params"])
  assert n(get_model("resnet50", num_classes=1000)) == 25_557_032
  assert n(get_model("resnet18", num_classes=1000)) == 11_689_512
  assert n(get_bit_model("bit_r50x1", num_classes=1000)) == 25_549_352


# ---- BiT -------------------------------------------------------------------------
BIT_UNITS = (3, 4, 6, 3)


def synthetic_bit(num_classes=1000, seed=0):
  """Random weights under BiT's own npz names for R50x1."""
  rng = np.random.default_rng(seed)
  w = {}

  def conv(name, k, cin, cout):  # a non-zero mean, so standardization matters
    w[f"{name}/standardized_conv2d/kernel"] = rng.normal(
        0.3, 1.0, (k, k, cin, cout)).astype(np.float32)

  def gn(name, c):
    w[f"{name}/group_norm/gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    w[f"{name}/group_norm/beta"] = rng.normal(0, 0.3, c).astype(np.float32)

  conv("resnet/root_block", 7, 3, 64)
  cin = 64
  for b, units in enumerate(BIT_UNITS, start=1):
    mid = 64 * 2 ** (b - 1)
    for u in range(1, units + 1):
      p = f"resnet/block{b}/unit{u:02d}"
      gn(f"{p}/a", cin), conv(f"{p}/a", 1, cin, mid)
      gn(f"{p}/b", mid), conv(f"{p}/b", 3, mid, mid)
      gn(f"{p}/c", mid), conv(f"{p}/c", 1, mid, 4 * mid)
      if u == 1:
        conv(f"{p}/a/proj", 1, cin, 4 * mid)
      cin = 4 * mid
  gn("resnet", cin)
  w["resnet/head/conv2d/kernel"] = rng.normal(0, 0.05, (1, 1, cin, num_classes)).astype(np.float32)
  w["resnet/head/conv2d/bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  return w


def bit_reference(w, x):
  """BiT's forward pass in torch.nn.functional, read straight off the npz names (NCHW)."""
  def conv(h, name, stride=1):
    k = torch.from_numpy(w[f"{name}/standardized_conv2d/kernel"]).permute(3, 2, 0, 1)
    var, mean = torch.var_mean(k, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return F.conv2d(h, (k - mean) / torch.sqrt(var + 1e-10), stride=stride,
                    padding=(k.shape[-1] - 1) // 2)

  def gn_relu(h, name):
    return F.relu(F.group_norm(h, 32, torch.from_numpy(w[f"{name}/group_norm/gamma"]),
                               torch.from_numpy(w[f"{name}/group_norm/beta"]), eps=1e-5))

  h = conv(torch.from_numpy(x), "resnet/root_block", 2)
  h = F.max_pool2d(F.pad(h, (1, 1, 1, 1)), 3, 2)  # zero padding, as BiT does
  for b, units in enumerate(BIT_UNITS, start=1):
    for u in range(1, units + 1):
      p, stride = f"resnet/block{b}/unit{u:02d}", 2 if b > 1 and u == 1 else 1
      y = gn_relu(h, f"{p}/a")
      shortcut = conv(y, f"{p}/a/proj", stride) if u == 1 else h
      y = conv(gn_relu(conv(y, f"{p}/a"), f"{p}/b"), f"{p}/b", stride)
      h = conv(gn_relu(y, f"{p}/c"), f"{p}/c") + shortcut
  h = gn_relu(h, "resnet").mean(dim=(2, 3))
  k = torch.from_numpy(w["resnet/head/conv2d/kernel"][0, 0])
  return (h @ k + torch.from_numpy(w["resnet/head/conv2d/bias"])).numpy()


@pytest.fixture(scope="module")
def bit_npz(tmp_path_factory):
  w = synthetic_bit()
  path = str(tmp_path_factory.mktemp("bit") / "BiT-M-R50x1.npz")
  np.savez(path, **w)
  return path, w


def test_bit_logits_match(bit_npz, images):
  path, w = bit_npz
  # A nearly flat image too: its small activations make GroupNorm's eps matter.
  images = np.concatenate([images, 1e-3 * images[:1]])
  with torch.no_grad():
    ref = bit_reference(w, images)
  assert max_diff(jtl_logits(path, images), ref, "bit_r50x1") <= TOL


def test_bit_paths_and_meta(bit_npz):
  path, w = bit_npz
  params, batch_stats, meta = convert.load(path)
  flat = paths(params)
  assert batch_stats == {} and meta["model"]["name"] == "bit_r50x1"
  assert meta["data"]["mean"] == [0.5] * 3 and meta["data"]["std"] == [0.5] * 3
  np.testing.assert_array_equal(flat["stem/conv/kernel"],
                                w["resnet/root_block/standardized_conv2d/kernel"])
  np.testing.assert_array_equal(flat["stage2/block0/downsample/kernel"],
                                w["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"])
  np.testing.assert_array_equal(flat["stage3/block5/conv2/kernel"],
                                w["resnet/block3/unit06/b/standardized_conv2d/kernel"])
  np.testing.assert_array_equal(flat["stage1/block0/gn3/scale"],
                                w["resnet/block1/unit01/c/group_norm/gamma"])
  np.testing.assert_array_equal(flat["pre_head_norm/bias"], w["resnet/group_norm/beta"])
  assert flat["head/kernel"].shape == (2048, 1000)
  model_paths = set(paths(zeros_like_init(get_bit_model("bit_r50x1", num_classes=1000))["params"]))
  assert set(flat) == model_paths and len(flat) == len(w)


def test_bit_model_signature():
  model = get_bit_model("bit_r50x1", num_classes=3)
  x = jnp.zeros((1, 64, 64, 3))
  variables = zeros_like_init(model)
  (logits, out), _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, bn_train=("stage4",), mutable=["batch_stats"]),
      variables)
  assert logits.shape == (1, 3) and set(out) == {"stem", "stage1", "stage2", "stage3",
                                                 "stage4", "pre_logits"}
  with pytest.raises(ValueError, match="small_stem"):
    get_bit_model("bit_r50x1", num_classes=3, small_stem=True)


# ---- Safety and clear errors ---------------------------------------------------------
class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_refused(tmp_path, monkeypatch):
  marker = tmp_path / "pwned"
  zipped, plain = str(tmp_path / "evil.pth"), str(tmp_path / "evil_plain.pt")
  torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, zipped)
  with open(plain, "wb") as f:
    pickle.dump({"x": _Payload(marker)}, f)
  for path in (zipped, plain):
    with pytest.raises(ValueError, match="refused.*" + os.path.basename(path)):
      convert.load(path)
    with pytest.raises(ValueError, match=os.path.basename(path)):
      safe_pickle.load(path)
  with monkeypatch.context() as m:  # without torch: the allow-list unpickler
    m.setitem(sys.modules, "torch", None)
    with pytest.raises(ValueError, match="refused.*evil.pth.*system"):
      convert.load(zipped)
    with pytest.raises(ValueError, match="evil_plain.pt is not a zip.*install torch"):
      convert.load(plain)
  assert not marker.exists()
  with open(plain, "rb") as f:  # The payload is live: a plain unpickle runs it.
    pickle.load(f)
  assert marker.exists()


def test_truncated_files_named(hf, bit_npz, tmp_path):
  _, folder, _, _ = hf
  for name in ("config.json", "model.safetensors"):
    data = open(os.path.join(folder, name), "rb").read()
    open(tmp_path / name, "wb").write(data if name == "config.json" else data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
    convert.load(str(tmp_path))
  npz = tmp_path / "cut.npz"
  npz.write_bytes(open(bit_npz[0], "rb").read()[:-1000])
  with pytest.raises(ValueError, match="cut.npz"):
    convert.load(str(npz))
  (tmp_path / "weights.txt").write_text("x")
  with pytest.raises(ValueError, match="weights.txt"):
    convert.load(str(tmp_path / "weights.txt"))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "bert"}, "'bert' model"),
    ({"downsample_in_first_stage": True}, "downsample_in_first_stage"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"depths": [2, 2, 2]}, r"depths \[2, 2, 2\].*jtl's ResNet has 4 stages"),
])
def test_config_refused(tmp_path, change, message):
  config = {**HF_ARCHS["resnet18"], "model_type": "resnet", **change}
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=rf"config\.json.*{message}"):
    convert.load(str(tmp_path))


def test_hub_id_offline(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="microsoft/resnet-50.*local folder"):
    convert.load("microsoft/resnet-50")


# ---- Writing jtl workdirs, and merging into a new task -----------------------------------
def test_convert_round_trip(hf, bit_npz, tmp_path):
  arch, folder, _, _ = hf
  sources = (folder, bit_npz[0]) if arch == "resnet18" else (folder,)
  for i, src in enumerate(sources):
    dst = str(tmp_path / f"run{i}")
    meta = convert.convert(src, dst)
    params, batch_stats = checkpoint.load_model(dst)
    want_params, want_stats, _ = convert.load(src)
    got, want = paths(params), paths(want_params)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k].astype(np.float32))
    assert paths(batch_stats).keys() == paths(want_stats).keys()
    with open(os.path.join(dst, "model.json")) as f:
      written = json.load(f)
    assert written == meta
    assert set(written["model"]) == {"name", "num_classes", "small_stem", "width", "dtype"}
    assert set(written["data"]) == {"image_size", "channels", "mean", "std"}
    with pytest.raises(FileExistsError):
      convert.convert(src, dst)
  again = convert.convert(str(tmp_path / "run0"), str(tmp_path / "copy"))  # jtl -> jtl
  assert again["model"]["name"] == arch
  # A corrupt orbax item fails whole, naming the item.
  item = os.path.join(str(tmp_path / "copy"), "checkpoints", "0", "model")
  os.remove(os.path.join(item, "_METADATA"))
  for root, _, files in os.walk(item):
    for name in files:
      open(os.path.join(root, name), "wb").close()
  with pytest.raises(ValueError, match="could not read checkpoint .*model"):
    checkpoint.load_model(str(tmp_path / "copy"))


def test_convert_refuses_what_does_not_fit(hf, tmp_path):
  arch, _, model, _ = hf
  state = torchvision_state(model)
  del state["layer4.1.conv2.weight"]
  torch.save(state, str(tmp_path / "partial.pth"))
  with pytest.raises(ValueError,
                     match=r"partial\.pth does not fit.*missing: stage4/block1/conv2/kernel"):
    convert.convert(str(tmp_path / "partial.pth"), str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()  # nothing half-written


def test_new_head_via_dont_load(hf_built):
  _, folder, _, _ = hf_built("resnet18")  # the 1000-class one
  variables = zeros_like_init(get_model("resnet18", num_classes=5))
  variables["params"]["head"]["kernel"] += 1.0
  with pytest.raises(ValueError, match=r"mis-shaped:.*head/kernel \(checkpoint \(512, 1000\)"):
    convert.load_into(variables, folder)
  loaded, report = convert.load_into(variables, folder, dont_load=("head/.*",))
  assert report["kept_from_init"] == ["head/bias", "head/kernel"]
  assert not np.any(np.asarray(loaded["params"]["head"]["kernel"]))  # zero_head
  kept, _ = convert.load_into(variables, folder, dont_load=("head/.*",), zero_head=False)
  assert np.all(np.asarray(kept["params"]["head"]["kernel"]) == 1.0)
  params, _, _ = convert.load(folder)
  np.testing.assert_array_equal(loaded["params"]["stage4"]["block1"]["conv2"]["kernel"],
                                params["stage4"]["block1"]["conv2"]["kernel"])
  fresh = convert.init_head(kept["params"], zero=False, rng=jax.random.key(0))
  assert np.std(np.asarray(fresh["head"]["kernel"])) > 0


@pytest.mark.slow
def test_transfer_run_starts_from_a_hugging_face_folder(hf_built, tmp_path):
  """configs' `init=hf:PATH`: the trainer loads the HF weights and their normalization."""
  from jtl import train
  from test_train import tiny_config
  _, folder, _, _ = hf_built("resnet18")
  config = tiny_config(**{"model.name": "auto", "data.image_size": 32,
                          "data.channels": 3, "init": f"hf:{folder}", "total_steps": 1,
                          "strategy.name": "linear_probe"})
  train.train_and_evaluate(config, str(tmp_path))
  hf_params, _, _ = convert.load(folder)
  got = flatten_dict(checkpoint.load_model(str(tmp_path))[0], sep="/")
  for k, v in flatten_dict(hf_params, sep="/").items():
    if not k.startswith("head/"):
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert got["head/kernel"].shape == (512, 5)
  meta = checkpoint.read_model_json(str(tmp_path))
  assert meta["data"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
  assert meta["model"] | {"dtype": None} == {"name": "resnet18", "small_stem": False, "width": 1.0,
                                             "num_classes": 5, "dtype": None}


def test_a_source_of_another_architecture_fails_in_one_sentence(bit_npz, tmp_path):
  from jtl import train
  from test_train import tiny_config
  with pytest.raises(ValueError, match=r"holds a bit_r50x1, but config.model.name is 'resnet18'"):
    train.train_and_evaluate(tiny_config(init=f"bit:{bit_npz[0]}"), str(tmp_path))


def test_an_unreachable_hub_id_gets_one_sentence(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path))   # An empty cache.
  from jtl import convert
  with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face Hub"):
    convert.load("microsoft/resnet-50")
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs").mkdir()
  with pytest.raises(FileNotFoundError, match="runs/source does not exist; a source model"):
    convert.load("runs/source")    # A missing path under a local folder is no hub id.


# ---- Narrow and odd Hugging Face ResNets (issue 21) -------------------------------------
NARROW = {   # jtl's own resnet18 at width 0.25, then shapes no jtl preset has.
    "width_quarter": dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                          depths=[2, 2, 2, 2], layer_type="basic"),
    "odd_basic": dict(embedding_size=12, hidden_sizes=[10, 20, 36, 52],
                      depths=[1, 2, 1, 1], layer_type="basic"),
    "odd_bottleneck": dict(embedding_size=20, hidden_sizes=[24, 40, 64, 100],
                           depths=[1, 1, 2, 1], layer_type="bottleneck"),
}


def randomized(model):
  """`model` with non-trivial BatchNorm statistics, in eval mode."""
  torch.manual_seed(1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0)
  return model.eval()


@pytest.mark.parametrize("shape", list(NARROW))
def test_narrow_and_odd_hf_resnets_load_with_matching_logits(tmp_path, images, shape):
  torch.manual_seed(0)
  config = transformers.ResNetConfig(**NARROW[shape], num_labels=3)
  model = randomized(transformers.ResNetForImageClassification(config))
  model.save_pretrained(str(tmp_path))
  with torch.no_grad():
    ref = model(torch.from_numpy(images)).logits.numpy()
  _, _, meta = convert.load(str(tmp_path))
  if shape == "width_quarter":   # exactly jtl's resnet18 at width 0.25: said so by name
    assert (meta["model"]["name"], meta["model"]["width"]) == ("resnet18", 0.25)
    assert "stage_widths" not in meta["model"]
  else:
    assert meta["model"]["stage_widths"] == NARROW[shape]["hidden_sizes"]
    assert meta["model"]["stage_sizes"] == NARROW[shape]["depths"]
  assert max_diff(jtl_logits(str(tmp_path), images), ref, f"hf {shape}") <= TOL


def test_a_narrow_hf_backbone_gives_the_same_features(tmp_path, images):
  """A ResNetModel (no classifier) of odd widths: jtl's pooled features equal HF's."""
  torch.manual_seed(0)
  config = transformers.ResNetConfig(**NARROW["odd_bottleneck"])
  model = randomized(transformers.ResNetModel(config))
  model.save_pretrained(str(tmp_path))
  with torch.no_grad():
    ref = model(torch.from_numpy(images)).pooler_output.numpy()[:, :, 0, 0]
  loaded = convert.load(str(tmp_path))
  jtl_model = convert.build_model(loaded[2], num_classes=1)
  variables, _ = convert.load_into(zeros_like_init(jtl_model), loaded, dont_load=("head/.*",))
  _, out = jax.jit(jtl_model.apply)(variables, images.transpose(0, 2, 3, 1))
  assert max_diff(np.asarray(out["pre_logits"]), ref, "hf backbone features") <= TOL


def test_hf_weights_narrower_than_their_config_are_refused(tmp_path):
  config = transformers.ResNetConfig(**NARROW["odd_basic"])
  transformers.ResNetForImageClassification(config).save_pretrained(str(tmp_path))
  raw = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**raw, "hidden_sizes": [10, 20, 36, 64]}))
  with pytest.raises(ValueError, match=r"config.json gives channel widths \[12, 10, 20, 36, 64\].*"
                     r"weights have \[12, 10, 20, 36, 52\]"):
    convert.load(str(tmp_path))
