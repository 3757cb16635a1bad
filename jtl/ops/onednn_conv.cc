// oneDNN 2D convolutions as XLA FFI handlers, for jitted JAX code on CPU.
//
// Activations are NHWC, as flax stores them, and weights OHWI: flax's HWIO
// transposed by jtl/ops/conv.py, because oneDNN 2.6 reorders OHWI weights into
// its blocked layouts ~15x faster than HWIO ones (its generic reorder against a
// jit one: 5.5 against 1 ms of a 28 px train step's 60 calls). groups = 1,
// dilation = 1. Three handlers share one shape description:
//   OnednnConvForward        (x, w)  -> y
//   OnednnConvBackwardData   (dy, w) -> dx
//   OnednnConvBackwardWeights(x, dy) -> dw
// Each takes int64 attributes `strides` (sh, sw) and `padding` (top, bottom,
// left, right). Primitives are built once per shape and kept in a cache.
// jtl/ops/conv.py compiles this file; see there for the command.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iterator>
#include <new>
#include <map>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

enum class Kind : int64_t { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Sizes in oneDNN's logical order (activations NCHW, weights OIHW); the
// memory format tags below say how they really lie in memory (NHWC, OHWI).
struct Shape {
  memory::data_type dtype;
  memory::dims src, weights, dst, strides, pad_l, pad_r;

  std::vector<int64_t> Key(Kind kind) const {
    std::vector<int64_t> key = {static_cast<int64_t>(kind),
                                static_cast<int64_t>(dtype)};
    for (const auto* dims : {&src, &weights, &dst, &strides, &pad_l, &pad_r})
      key.insert(key.end(), dims->begin(), dims->end());
    return key;
  }
};

// A convolution primitive plus the weights reorder it may need: the fastest
// kernels want blocked weights, which are small, so we reorder those and keep
// the (large) activations in NHWC.
struct Plan {
  dnnl::primitive conv;
  memory::desc weights;       // the layout the primitive uses
  memory::desc user_weights;  // OHWI
  std::optional<dnnl::reorder> reorder;  // OHWI -> blocked, or blocked -> OHWI
  size_t scratch_bytes = 0;
};

Plan MakePlan(Kind kind, const Shape& s) {
  const dnnl::engine& engine = Engine();
  memory::desc src(s.src, s.dtype, Tag::nhwc);
  memory::desc dst(s.dst, s.dtype, Tag::nhwc);
  memory::desc any_weights(s.weights, s.dtype, Tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto direct = dnnl::algorithm::convolution_direct;
  const auto training = dnnl::prop_kind::forward_training;

  Plan plan;
  plan.user_weights = memory::desc(s.weights, s.dtype, Tag::ohwi);
#if DNNL_VERSION_MAJOR >= 3
  dnnl::convolution_forward::primitive_desc fwd(
      engine, training, direct, src, any_weights, dst, s.strides, s.pad_l,
      s.pad_r, attr);
#else
  dnnl::convolution_forward::primitive_desc fwd(
      {training, direct, src, any_weights, dst, s.strides, s.pad_l, s.pad_r},
      attr, engine);
#endif
  if (kind == Kind::kForward) {
    plan.conv = dnnl::convolution_forward(fwd);
    plan.weights = fwd.weights_desc();
    plan.scratch_bytes = fwd.scratchpad_desc().get_size();
  } else if (kind == Kind::kBackwardData) {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_data::primitive_desc bwd(
        engine, direct, src, any_weights, dst, s.strides, s.pad_l, s.pad_r,
        fwd, attr);
#else
    dnnl::convolution_backward_data::primitive_desc bwd(
        {direct, src, any_weights, dst, s.strides, s.pad_l, s.pad_r}, attr,
        engine, fwd);
#endif
    plan.conv = dnnl::convolution_backward_data(bwd);
    plan.weights = bwd.weights_desc();
    plan.scratch_bytes = bwd.scratchpad_desc().get_size();
  } else {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_weights::primitive_desc bwd(
        engine, direct, src, any_weights, dst, s.strides, s.pad_l, s.pad_r,
        fwd, attr);
#else
    dnnl::convolution_backward_weights::primitive_desc bwd(
        {direct, src, any_weights, dst, s.strides, s.pad_l, s.pad_r}, attr,
        engine, fwd);
#endif
    plan.conv = dnnl::convolution_backward_weights(bwd);
    plan.weights = bwd.diff_weights_desc();
    plan.scratch_bytes = bwd.scratchpad_desc().get_size();
  }
  if (plan.weights != plan.user_weights) {
    bool to_user = kind == Kind::kBackwardWeights;
    const memory::desc& from = to_user ? plan.weights : plan.user_weights;
    const memory::desc& to = to_user ? plan.user_weights : plan.weights;
    plan.reorder = dnnl::reorder(dnnl::reorder::primitive_desc(engine, from, engine, to));
  }
  return plan;
}

// Memory maps this process may still open (Linux's vm.max_map_count less those in
// use), or a large number where /proc does not say.
int64_t MapsLeft(int64_t* used, int64_t* limit) {
  std::ifstream limit_file("/proc/sys/vm/max_map_count");
  std::ifstream maps("/proc/self/maps");
  if (!(limit_file >> *limit) || !maps) return INT64_MAX;
  *used = std::count(std::istreambuf_iterator<char>(maps), std::istreambuf_iterator<char>(), '\n');
  return *limit - *used;
}

// oneDNN (2.6 at least) does not fail cleanly when it generates a kernel and the
// process has no memory map left: it crashes inside dnnl_primitive_create. A process
// that keeps hundreds of compiled XLA programs gets there (each holds hundreds of
// maps), so a new plan needs this many maps to spare, or it is an error for Python.
constexpr int64_t kMapsToSpare = 512;

const Plan& GetPlan(Kind kind, const Shape& s) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::vector<int64_t>, std::unique_ptr<Plan>>;
  std::vector<int64_t> key = s.Key(kind);
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache->find(key);
  if (found != cache->end()) return *found->second;
  int64_t used = 0, limit = 0;
  if (MapsLeft(&used, &limit) < kMapsToSpare)
    throw std::runtime_error(
        "this process uses " + std::to_string(used) + " of its " + std::to_string(limit) +
        " memory maps (vm.max_map_count), and oneDNN crashes creating a kernel without "
        "spare ones; free compiled programs (jax.clear_caches()) or set JTL_ONEDNN=0");
  // Inserted only once made: a plan that failed to build leaves no entry behind.
  return *cache->emplace(key, std::make_unique<Plan>(MakePlan(kind, s))).first->second;
}

// A per-thread buffer that only grows: XLA may run two convolutions at once,
// so scratch space and reordered weights must not be shared between threads.
struct Buffer {
  void* data = nullptr;
  size_t size = 0;
  ~Buffer() { std::free(data); }
  void* Get(size_t bytes) {
    if (bytes > size) {
      std::free(data);
      size = (bytes + 63) / 64 * 64;
      data = std::aligned_alloc(64, size);
      if (data == nullptr) {
        size = 0;
        throw std::bad_alloc();
      }
    }
    return data;
  }
};

memory::data_type ToDnnl(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    default: return memory::data_type::undef;
  }
}

// NHWC or OHWI dimensions -> oneDNN's NCHW or OIHW order.
memory::dims Activation(ffi::Span<const int64_t> d) { return {d[0], d[3], d[1], d[2]}; }
memory::dims Weights(ffi::Span<const int64_t> d) { return {d[0], d[3], d[1], d[2]}; }

template <Kind kind>
ffi::Error Conv(ffi::AnyBuffer in0, ffi::AnyBuffer in1,
                ffi::Result<ffi::AnyBuffer> out, ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> padding) {
  // Which buffer plays which role: (src, weights, dst) of the forward conv.
  void* src;
  void* weights;
  void* dst;
  ffi::Span<const int64_t> src_dims, weights_dims, dst_dims;
  if (kind == Kind::kForward) {
    src = in0.untyped_data(), weights = in1.untyped_data(), dst = out->untyped_data();
    src_dims = in0.dimensions(), weights_dims = in1.dimensions(), dst_dims = out->dimensions();
  } else if (kind == Kind::kBackwardData) {
    dst = in0.untyped_data(), weights = in1.untyped_data(), src = out->untyped_data();
    dst_dims = in0.dimensions(), weights_dims = in1.dimensions(), src_dims = out->dimensions();
  } else {
    src = in0.untyped_data(), dst = in1.untyped_data(), weights = out->untyped_data();
    src_dims = in0.dimensions(), dst_dims = in1.dimensions(), weights_dims = out->dimensions();
  }
  if (src_dims.size() != 4 || weights_dims.size() != 4 || dst_dims.size() != 4 ||
      strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("onednn conv: want rank-4 NHWC/OHWI, 2 strides, 4 pads");
  if (in0.element_type() != in1.element_type() || in0.element_type() != out->element_type())
    return ffi::Error::InvalidArgument("onednn conv: operands must share one dtype");
  Shape s;
  s.dtype = ToDnnl(in0.element_type());
  if (s.dtype == memory::data_type::undef)
    return ffi::Error::InvalidArgument("onednn conv: dtype must be float32 or bfloat16");
  s.src = Activation(src_dims);
  s.weights = Weights(weights_dims);
  s.dst = Activation(dst_dims);
  s.strides = {strides[0], strides[1]};
  s.pad_l = {padding[0], padding[2]};
  s.pad_r = {padding[1], padding[3]};

  // One convolution at a time: each already spreads over every core through OpenMP,
  // and concurrent OpenMP regions from XLA's threads are one suspect of a rare abort.
  static std::mutex running;
  std::lock_guard<std::mutex> one_at_a_time(running);
  try {
    const Plan& plan = GetPlan(kind, s);
    const dnnl::engine& engine = Engine();
    thread_local dnnl::stream stream(engine);
    thread_local Buffer scratch, blocked_weights;
    memory user_weights(plan.user_weights, engine, weights);
    memory conv_weights = user_weights;
    if (plan.reorder) {
      conv_weights = memory(plan.weights, engine,
                            blocked_weights.Get(plan.weights.get_size()));
      if (kind != Kind::kBackwardWeights)
        plan.reorder->execute(stream, user_weights, conv_weights);
    }
    std::unordered_map<int, memory> args;
    if (plan.scratch_bytes > 0) {
      memory::desc bytes({static_cast<int64_t>(plan.scratch_bytes)}, memory::data_type::u8, Tag::x);
      args.insert({DNNL_ARG_SCRATCHPAD, memory(bytes, engine, scratch.Get(plan.scratch_bytes))});
    }
    memory src_mem(memory::desc(s.src, s.dtype, Tag::nhwc), engine, src);
    memory dst_mem(memory::desc(s.dst, s.dtype, Tag::nhwc), engine, dst);
    if (kind == Kind::kForward) {
      args.insert({{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, conv_weights},
                   {DNNL_ARG_DST, dst_mem}});
    } else if (kind == Kind::kBackwardData) {
      args.insert({{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, conv_weights},
                   {DNNL_ARG_DIFF_DST, dst_mem}});
    } else {
      args.insert({{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, conv_weights},
                   {DNNL_ARG_DIFF_DST, dst_mem}});
    }
    plan.conv.execute(stream, args);
    if (plan.reorder && kind == Kind::kBackwardWeights)
      plan.reorder->execute(stream, conv_weights, user_weights);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  } catch (const std::exception& e) {  // e.g. bad_alloc: an error for Python, not an abort.
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// 1 when this CPU's oneDNN has bfloat16 kernels for all three directions
// (AVX-512 machines do; others would fail at run time), else 0.
extern "C" int OnednnConvSupportsBfloat16() {
  Shape s{memory::data_type::bf16, {1, 8, 4, 4}, {8, 8, 3, 3}, {1, 8, 4, 4},
          {1, 1}, {1, 1}, {1, 1}};
  try {
    for (Kind kind : {Kind::kForward, Kind::kBackwardData, Kind::kBackwardWeights})
      GetPlan(kind, s);
  } catch (const std::exception&) {  // no bfloat16 kernels, or no memory maps to spare
    return 0;
  }
  return 1;
}

#define JTL_DEFINE_CONV(name, kind)                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, Conv<kind>,                     \
                                ffi::Ffi::Bind()                      \
                                    .Arg<ffi::AnyBuffer>()            \
                                    .Arg<ffi::AnyBuffer>()            \
                                    .Ret<ffi::AnyBuffer>()            \
                                    .Attr<ffi::Span<const int64_t>>("strides") \
                                    .Attr<ffi::Span<const int64_t>>("padding"))

JTL_DEFINE_CONV(OnednnConvForward, Kind::kForward);
JTL_DEFINE_CONV(OnednnConvBackwardData, Kind::kBackwardData);
JTL_DEFINE_CONV(OnednnConvBackwardWeights, Kind::kBackwardWeights);
