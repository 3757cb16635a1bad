"""Compiles onednn_conv.cc on first use and registers its handlers with XLA.

The shared library is built with the system C++ compiler against oneDNN, found
in this order: $DNNLROOT (an install with include/ and lib/); the Python
environment (`pip install onednn-cpu-gomp onednn-devel-cpu-gomp`, oneDNN 3.2);
the system (Debian: `apt-get install libdnnl-dev`, oneDNN 2.6). It is cached
under $JTL_CACHE_DIR (default ~/.cache/jtl),
keyed by the source, jax version and compiler command, so each machine builds
it once (~4 s). Anything that goes wrong leaves `load()` returning () with
a one-line notice on stderr; callers then use XLA's convolution.
It is on by default; JTL_ONEDNN=0 turns it off (XLA's convolution everywhere). It was
opt-in after one full test run out of four aborted inside a oneDNN call (2026-11-27). The
cause, found on 2026-12-07: oneDNN 2.6's weight gradient of a strided 1x1 convolution with
few input channels writes past its workspace (oneDNN issue #6035); jtl/ops/conv.py now gives
oneDNN those convolutions at stride 1 (README, "Speed and scale").
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
TARGETS = {  # XLA target name -> exported handler symbol
    "jtl_onednn_conv_forward": "OnednnConvForward",
    "jtl_onednn_conv_backward_data": "OnednnConvBackwardData",
    "jtl_onednn_conv_backward_weights": "OnednnConvBackwardWeights",
}


class BuildError(RuntimeError):
  pass


def _pip_onednn() -> str | None:
  """sys.prefix when pip put oneDNN's headers and library there, else None."""
  have = [os.path.join(sys.prefix, "include", "oneapi", "dnnl", "dnnl.hpp"),
          os.path.join(sys.prefix, "lib", "libdnnl.so")]
  return sys.prefix if all(map(os.path.exists, have)) else None


def compile_command(output: str) -> list[str]:
  """The compiler command line that builds the library into `output`."""
  cxx = os.environ.get("CXX") or "g++"
  command = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", output]
  if root := os.environ.get("DNNLROOT") or _pip_onednn():
    lib = os.path.join(root, "lib")
    command += [f"-I{os.path.join(root, 'include')}", f"-L{lib}", f"-Wl,-rpath,{lib}"]
  return command + ["-ldnnl"]


def library_path() -> pathlib.Path:
  """Where the built library is cached; the name changes with what built it."""
  cache = os.environ.get("JTL_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jtl")
  key = hashlib.sha256(SOURCE.read_bytes())
  key.update(" ".join(compile_command("out") + [jax.__version__]).encode())
  return pathlib.Path(cache) / "ops" / f"onednn_conv-{key.hexdigest()[:16]}.so"


def build() -> pathlib.Path:
  """Builds the library unless a cached copy exists; returns its path."""
  path = library_path()
  if path.exists():
    return path
  if not shutil.which(compile_command("out")[0]):
    raise BuildError(f"no C++ compiler {compile_command('out')[0]!r}")
  path.parent.mkdir(parents=True, exist_ok=True)
  # Build under a temporary name, then rename: concurrent builders never see half a file.
  with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
    output = os.path.join(tmp, path.name)
    result = subprocess.run(compile_command(output), capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
      errors = [l for l in result.stderr.splitlines()
                if "error" in l or "cannot find" in l] or [result.stderr]
      raise BuildError(f"compiling {SOURCE.name} failed: {errors[0].strip()}")
    os.replace(output, path)
  return path


@functools.cache
def load() -> tuple[str, ...]:
  """Builds, loads and registers the oneDNN handlers once.

  Returns the dtypes they run: ("float32", "bfloat16"), ("float32",) where the
  CPU lacks bfloat16 kernels, or () when the library is unusable.
  """
  if os.environ.get("JTL_ONEDNN") == "0":   # The way out: see README, "Speed and scale".
    return ()
  try:
    library = ctypes.CDLL(str(build()))
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
    bf16 = library.OnednnConvSupportsBfloat16() == 1
  except (BuildError, OSError, AttributeError, subprocess.TimeoutExpired) as e:
    print(f"jtl: oneDNN convolutions unavailable ({e}); using XLA's, which are slower on CPU "
          "(apt-get install libdnnl-dev, or JTL_ONEDNN=0 to silence this).", file=sys.stderr)
    return ()
  return ("float32", "bfloat16") if bf16 else ("float32",)
