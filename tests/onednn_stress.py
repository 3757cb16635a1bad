"""Hammers jtl's oneDNN convolutions in one process, where the suite's one abort happened.

  JTL_ONEDNN=1 .venv/bin/python tests/onednn_stress.py [ROUNDS]     (default 200)
  JTL_ONEDNN=1 .venv/bin/python tests/onednn_stress.py maps         (at the map limit)

Each round runs, in the main thread, forward, backward-data and backward-weights on one of
the ops checks' shapes in turn (strides, lopsided padding, the stem, bfloat16 where the CPU
has it) and the trainer's jitted step, and compares them with XLA's convolution. Meanwhile two other
Python threads keep XLA busy: one with XLA's own intra-op work (matmuls), one with oneDNN
convolutions of another shape, so custom calls start from several threads at once; and
every round a pmap over 4 simulated CPU devices runs a convolution on each at once. Every
25 rounds the compile caches are cleared, so compiles and first calls recur. A round that
disagrees with XLA raises; an abort kills the process (tests/test_ops.py sees its code).
"""

import functools
import os
import sys
import threading
import time

os.environ["JTL_ONEDNN"] = "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jtl import ops  # noqa: E402

SHAPES = [  # (kernel, stride, padding, size, dtype)
    (1, 1, "SAME", 9, jnp.float32),
    (1, 2, ((0, 0), (0, 0)), 10, jnp.float32),
    (3, 1, ((1, 1), (1, 1)), 9, jnp.float32),
    (3, 2, "SAME", 10, jnp.float32),
    (7, 2, ((3, 3), (3, 3)), 15, jnp.float32),
    (7, 1, ((2, 4), (3, 1)), 12, jnp.float32),
    (3, 1, "SAME", 8, jnp.bfloat16),
]


def xla_conv(x, w, strides, padding):
  return jax.lax.conv_general_dilated(x, w, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.cache
def grads_fn(conv, strides, padding):
  """Jitted (x, w, r) -> (y, dx, dw), the gradients of sum(y * r): one per shape, so rounds
  execute compiled code, until jax.clear_caches() makes them compile again."""
  def loss(x, w, r):
    y = conv(x, w, strides, padding)
    return jnp.sum(y.astype(jnp.float32) * r), y
  grad = jax.value_and_grad(loss, (0, 1), has_aux=True)
  return jax.jit(lambda x, w, r: (lambda out: (out[0][1], *out[1]))(grad(x, w, r)))


def grads(conv, x, w, r, strides, padding):
  return grads_fn(conv, strides, padding)(x, w, r)


def check_shape(round_):
  """One of SHAPES, in turn, against XLA."""
  kernel, stride, padding, size, dtype = SHAPES[round_ % len(SHAPES)]
  if ops.available(dtype):
    kx, kw, kr = jax.random.split(jax.random.key(round_ * 31 + kernel), 3)
    x = jax.random.normal(kx, (3, size, size, 16)).astype(dtype)
    w = (jax.random.normal(kw, (kernel, kernel, 16, 8)) / (4 * kernel)).astype(dtype)
    strides = (stride, stride)
    r = jax.random.normal(kr, jax.eval_shape(lambda x, w: xla_conv(x, w, strides, padding), x, w).shape)
    got = grads(ops.conv, x, w, r, strides, padding)
    want = grads(xla_conv, x.astype(jnp.float32), w.astype(jnp.float32), r, strides, padding)
    tol = 1e-4 if dtype == jnp.float32 else 0.05
    for name, a, b in zip(("y", "dx", "dw"), got, want):
      b = np.asarray(b)
      np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=tol,
                                 atol=tol * float(np.abs(b).max()),
                                 err_msg=f"round {round_}: {name} of {kernel}x{kernel}/{stride}")


def busy(stop, work):
  while not stop.is_set():
    jax.block_until_ready(work())


def main(rounds: int) -> None:
  assert ops.available(), "oneDNN conv library did not build; see the notice on stderr"
  assert jax.local_device_count() == 4, jax.devices()
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jtl import train
  from test_train import fixed_batch, tiny_state
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  state = jax.device_put(tiny_state(), NamedSharding(mesh, P()))
  batch = train.device_batch(fixed_batch(16), NamedSharding(mesh, P("data")))

  a = jax.random.normal(jax.random.key(1), (256, 256))
  matmuls = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  xb = jax.random.normal(jax.random.key(2), (8, 28, 28, 16))
  wb = jax.random.normal(jax.random.key(3), (3, 3, 16, 16)) / 12
  other = jax.jit(jax.grad(lambda x, w: jnp.sin(ops.conv(x, w, (1, 1), "SAME")).sum(), (0, 1)))
  xs = jax.random.normal(jax.random.key(4), (4, 2, 12, 12, 8))
  ws = jax.random.normal(jax.random.key(5), (4, 3, 3, 8, 8)) / 9
  per_device = jax.pmap(lambda x, w: ops.conv(x, w, (1, 1), "SAME"))

  step = jax.jit(train.train_step)
  stop = threading.Event()
  threads = [threading.Thread(target=busy, args=(stop, lambda: matmuls(a)), daemon=True),
             threading.Thread(target=busy, args=(stop, lambda: other(xb, wb)), daemon=True)]
  for t in threads:
    t.start()
  start = time.time()
  try:
    for i in range(rounds):
      if i and i % 25 == 0:
        jax.clear_caches()
        grads_fn.cache_clear()
      check_shape(i)
      state, metrics = step(state, batch, jax.random.key(i))
      assert np.isfinite(metrics["loss"]), f"round {i}: loss {metrics['loss']}"
      got = per_device(xs, ws)
      want = jax.vmap(lambda x, w: xla_conv(x, w, (1, 1), "SAME"))(xs, ws)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"round {i}: pmap")
      if (i + 1) % 20 == 0:
        print(f"{i + 1}/{rounds} rounds, {time.time() - start:.0f} s", flush=True)
  finally:
    stop.set()
    for t in threads:
      t.join()
  print(f"{rounds} rounds with no abort and no mismatch in {time.time() - start:.0f} s")


def at_the_map_limit() -> None:
  """With every memory map of the process in use (vm.max_map_count), a convolution of a new
  shape, which makes oneDNN generate kernels, raises an error naming the cause; oneDNN 2.6
  itself crashes there (SIGSEGV inside dnnl_primitive_create)."""
  import ctypes
  assert ops.available(), "oneDNN conv library did not build; see the notice on stderr"
  grad = jax.jit(jax.grad(lambda x, w: jnp.sin(ops.conv(x, w, (1, 1), "SAME")).sum(), (0, 1)))
  x, w = jnp.ones((2, 8, 8, 7)), jnp.ones((3, 3, 7, 5))
  compiled = grad.lower(x, w).compile()   # Compiled now: XLA itself needs maps to compile.
  with open("/proc/sys/vm/max_map_count") as f:
    limit = int(f.read())
  libc = ctypes.CDLL(None, use_errno=True)
  libc.mmap.restype = ctypes.c_void_p
  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                        ctypes.c_int, ctypes.c_long]
  libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  with open("/proc/self/maps") as f:
    pages = 2 * (limit - sum(1 for _ in f)) + 8
  # One inaccessible region, every other page of it made readable: one map per page.
  base = libc.mmap(None, pages * 4096, 0, 0x22, -1, 0)   # PROT_NONE, MAP_PRIVATE|ANONYMOUS
  assert base not in (None, ctypes.c_void_p(-1).value), "mmap failed"
  for page in range(0, pages, 2):
    libc.mprotect(base + page * 4096, 4096, 1)
  with open("/proc/self/maps") as f:
    print(f"{sum(1 for _ in f)} of {limit} memory maps in use", flush=True)
  try:
    jax.block_until_ready(compiled(x, w))
  except Exception as e:   # noqa: BLE001 (the error XLA raises for the FFI's)
    assert "memory maps" in str(e), e
    print(f"at the map limit: {type(e).__name__}: {str(e)[:200]}")
  else:
    raise AssertionError("a new oneDNN kernel was made with no memory map to spare")


if __name__ == "__main__":
  if sys.argv[1:] == ["maps"]:
    at_the_map_limit()
  else:
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
