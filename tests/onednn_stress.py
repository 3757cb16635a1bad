"""Hammers jtl's oneDNN convolutions in one process, where the suite's one abort happened.

  JTL_ONEDNN=1 .venv/bin/python tests/onednn_stress.py [ROUNDS]     (default 200)
  JTL_ONEDNN=1 .venv/bin/python tests/onednn_stress.py maps         (at the map limit)

Each round runs, in the main thread, forward, backward-data and backward-weights on one of
the ops checks' shapes in turn (strides, lopsided padding, the stem, bfloat16 where the CPU
has it) and the trainer's jitted step, and compares them with XLA's convolution. Meanwhile two other
Python threads keep XLA busy: one with XLA's own intra-op work (matmuls), one with oneDNN
convolutions of another shape, so custom calls start from several threads at once; and
every round a convolution is dispatched to each of 4 simulated CPU devices before any is
awaited, so their threads call oneDNN at once. Every
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
from onednn_checks import xla_conv  # noqa: E402

SHAPES = [  # (kernel, stride, padding, size, input channels, dtype)
    (1, 1, "SAME", 9, 16, jnp.float32),
    (1, 2, ((0, 0), (0, 0)), 10, 16, jnp.float32),
    (1, 2, ((0, 0), (0, 0)), 10, 5, jnp.float32),   # oneDNN issue #6035 (jtl/ops/conv.py)
    (3, 1, ((1, 1), (1, 1)), 9, 16, jnp.float32),
    (3, 2, "SAME", 10, 16, jnp.float32),
    (7, 2, ((3, 3), (3, 3)), 15, 3, jnp.float32),
    (7, 1, ((2, 4), (3, 1)), 12, 16, jnp.float32),
    (3, 1, "SAME", 8, 16, jnp.bfloat16),
]


@functools.cache
def grads_fn(conv, strides, padding):
  """Jitted (x, w, r) -> (y, dx, dw), the gradients of sum(y * r): one per shape, so rounds
  execute compiled code, until jax.clear_caches() makes them compile again."""
  def loss(x, w, r):
    y = conv(x, w, strides, padding)
    return jnp.sum(y.astype(jnp.float32) * r), y

  def output_and_grads(x, w, r):
    (_, y), (dx, dw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, w, r)
    return y, dx, dw
  return jax.jit(output_and_grads)


def grads(conv, x, w, r, strides, padding):
  return grads_fn(conv, strides, padding)(x, w, r)


def check_shape(round_):
  """One of SHAPES, in turn, against XLA."""
  kernel, stride, padding, size, channels, dtype = SHAPES[round_ % len(SHAPES)]
  if ops.available(dtype):
    kx, kw, kr = jax.random.split(jax.random.key(round_ * 31 + kernel), 3)
    x = jax.random.normal(kx, (3, size, size, channels)).astype(dtype)
    w = (jax.random.normal(kw, (kernel, kernel, channels, 8)) / (4 * kernel)).astype(dtype)
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


def busy(stop, work, done, errors):
  """Runs `work` until `stop`; counts the calls in `done`, keeps what it raised in `errors`."""
  try:
    while not stop.is_set():
      work()
      done.append(1)
  except Exception as e:   # noqa: BLE001 (re-raised in the main thread)
    errors.append(e)


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
  grad_sin = jax.jit(jax.grad(lambda x, w: jnp.sin(ops.conv(x, w, (1, 1), "SAME")).sum(),
                              (0, 1)))
  want_other = jax.grad(lambda x, w: jnp.sin(xla_conv(x, w, (1, 1), "SAME")).sum(), (0, 1))(xb, wb)

  def other():
    for got, want in zip(grad_sin(xb, wb), want_other):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg="the other thread")

  # One convolution per device, dispatched to all 4 before any is awaited: each device's
  # thread calls oneDNN at once (pmap would not: under its manual mesh jtl uses XLA's conv).
  on_device = [jax.device_put((jax.random.normal(jax.random.key(10 + d), (2, 12, 12, 8)),
                               jax.random.normal(jax.random.key(20 + d), (3, 3, 8, 8)) / 9),
                              device) for d, device in enumerate(jax.devices())]
  conv = jax.jit(lambda x, w: ops.conv(x, w, (1, 1), "SAME"))
  assert "jtl_onednn_conv_forward" in conv.lower(*on_device[0]).as_text()

  step = jax.jit(train.train_step)
  stop = threading.Event()
  done = ([], [])
  errors = []
  threads = [threading.Thread(target=busy, args=(stop, work, count, errors), daemon=True)
             for work, count in zip((lambda: jax.block_until_ready(matmuls(a)), other), done)]
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
      outputs = [conv(x, w) for x, w in on_device]   # dispatched, not yet awaited
      for (x, w), got in zip(on_device, outputs):
        np.testing.assert_allclose(got, xla_conv(x, w, (1, 1), "SAME"), rtol=1e-4, atol=1e-4,
                                   err_msg=f"round {i}: {got.device}")
      if errors:
        raise errors[0]
      if (i + 1) % 20 == 0:
        print(f"{i + 1}/{rounds} rounds, {time.time() - start:.0f} s", flush=True)
  finally:
    stop.set()
    for t in threads:
      t.join()
  if errors:
    raise errors[0]
  assert all(done), f"a busy thread never finished a call: {[len(d) for d in done]}"
  print(f"{rounds} rounds with no abort and no mismatch in {time.time() - start:.0f} s "
        f"(busy threads: {len(done[0])} matmul and {len(done[1])} oneDNN calls)")


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
  assert limit <= 2 ** 20, f"vm.max_map_count is {limit}: too many maps to fill in a test"
  page = os.sysconf("SC_PAGE_SIZE")
  libc = ctypes.CDLL(None, use_errno=True)
  libc.mmap.restype = ctypes.c_void_p
  libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                        ctypes.c_int, ctypes.c_long]
  libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  with open("/proc/self/maps") as f:
    pages = 2 * (limit - sum(1 for _ in f)) + 8
  # One inaccessible region, every other page of it made readable: one map per page.
  base = libc.mmap(None, pages * page, 0, 0x22, -1, 0)   # PROT_NONE, MAP_PRIVATE|ANONYMOUS
  assert base not in (None, ctypes.c_void_p(-1).value), "mmap failed"
  try:
    for p in range(0, pages, 2):
      if libc.mprotect(base + p * page, page, 1) != 0:
        break   # ENOMEM: the map table is full
    with open("/proc/self/maps") as f:
      used = sum(1 for _ in f)
    print(f"{used} of {limit} memory maps in use", flush=True)
    assert used >= limit - 1, f"filled only {used} of {limit} memory maps"
    try:
      jax.block_until_ready(compiled(x, w))
    except Exception as e:   # noqa: BLE001 (the error XLA raises for the FFI's)
      assert "memory maps" in str(e), e
      print(f"at the map limit: {type(e).__name__}: {str(e)[:200]}")
    else:
      raise AssertionError("a new oneDNN kernel was made with no memory map to spare")
  finally:
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.munmap(base, pages * page)


if __name__ == "__main__":
  if sys.argv[1:] == ["maps"]:
    at_the_map_limit()
  else:
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
