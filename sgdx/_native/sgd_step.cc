// One in-place pass of torch.optim.SGD's update over every leaf of a parameter tree.
//
// Per element, in the reference path's order of operations (sgdx.sgd):
//   g = maximize ? -grad : grad
//   g = g + weight_decay * p                                   (weight_decay != 0)
//   b = initialized ? momentum * b + (1 - dampening) * g : g   (momentum != 0)
//   g = nesterov ? g + momentum * b : b                        (momentum != 0)
//   p = p + (-lr) * g
// Inputs: hyper = [lr, momentum, dampening, weight_decay] (leaf dtype; the order of
// sgdx._sgd_state.HYPERPARAMETERS), flags (bool: has a leaf's buffer started; leaf i's is
// flags[offset + i], so that every call of a tree takes the same array and XLA slices
// nothing), then n params, n grads, n buffers. Outputs: n params and n buffers (aliased to the
// inputs: the step in place). Every leaf is an operand of its own, so
// that XLA emits no code around the call. The tree is cut into parts by element count, which
// XLA's intra-op threads and the calling thread share (no thread is started per call).
//
// Built by the package's build (setup.py) for baseline x86-64, with the loop also compiled for
// AVX2 and AVX-512 and chosen on the running CPU, so one binary runs on any x86-64.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SGDX_X86_64 1
#endif

namespace {

template <typename T>
struct Leaf {
  const T* p;  // the parameter (read)
  T* out;      // where the new parameter goes: the parameter itself when donated
  const T* g;
  T* b;
  int64_t size;
  bool initialized;
};

// One loop per combination of the flags, so that the compiler sees a branch-free body and
// vectorizes it: out = p - lr * d. Compiled into each instruction set's function below.
template <typename T, bool kMaximize, bool kDecay, bool kMomentum, bool kNesterov, bool kStarted>
[[gnu::always_inline]] inline void Loop(const Leaf<T>& leaf, int64_t begin, int64_t end, T lr,
                                        T momentum, T keep, T wd) {
  const T* p = leaf.p;
  T* out = leaf.out;
  const T* __restrict g = leaf.g;
  T* __restrict b = leaf.b;
  const T neg_lr = -lr;
  for (int64_t i = begin; i < end; ++i) {
    T d = kMaximize ? -g[i] : g[i];
    if constexpr (kDecay) d = d + wd * p[i];
    if constexpr (kMomentum) {
      const T buf = kStarted ? momentum * b[i] + keep * d : d;
      b[i] = buf;
      d = kNesterov ? d + momentum * buf : buf;
    }
    out[i] = p[i] + neg_lr * d;
  }
}

// The instruction sets the loops are built for, the widest the running CPU has chosen once
// per process: everything outside LoopAvx2 / LoopAvx512 is baseline code.
enum class Isa { kBaseline, kAvx2, kAvx512 };

#define SGDX_LOOP(name, attributes)                                                       \
  template <typename T, bool... kFlags>                                                   \
  attributes void name(const Leaf<T>& leaf, int64_t begin, int64_t end, T lr, T momentum, \
                       T keep, T wd) {                                                    \
    Loop<T, kFlags...>(leaf, begin, end, lr, momentum, keep, wd);                         \
  }
SGDX_LOOP(LoopBaseline, )
#ifdef SGDX_X86_64
SGDX_LOOP(LoopAvx2, __attribute__((target("avx2"))))
SGDX_LOOP(LoopAvx512, __attribute__((target("avx512f"))))
Isa RunningIsa() {
  __builtin_cpu_init();  // before any constructor of the process's may have run it
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  return __builtin_cpu_supports("avx2") ? Isa::kAvx2 : Isa::kBaseline;
}
#else
Isa RunningIsa() { return Isa::kBaseline; }
#endif
const Isa kIsa = RunningIsa();

template <typename T, bool... kFlags>
void Dispatch(const Leaf<T>& leaf, int64_t begin, int64_t end, T lr, T momentum, T keep, T wd,
              const bool* flags) {
  if constexpr (sizeof...(kFlags) == 5) {
#ifdef SGDX_X86_64
    switch (kIsa) {
      case Isa::kAvx512:
        return LoopAvx512<T, kFlags...>(leaf, begin, end, lr, momentum, keep, wd);
      case Isa::kAvx2:
        return LoopAvx2<T, kFlags...>(leaf, begin, end, lr, momentum, keep, wd);
      case Isa::kBaseline:
        break;
    }
#endif
    LoopBaseline<T, kFlags...>(leaf, begin, end, lr, momentum, keep, wd);
  } else if (flags[sizeof...(kFlags)]) {
    Dispatch<T, kFlags..., true>(leaf, begin, end, lr, momentum, keep, wd, flags);
  } else {
    Dispatch<T, kFlags..., false>(leaf, begin, end, lr, momentum, keep, wd, flags);
  }
}

template <typename T>
void Update(const Leaf<T>& leaf, int64_t begin, int64_t end, T lr, T momentum, T keep, T wd,
            bool nesterov, bool maximize) {
  const bool flags[5] = {maximize, wd != T(0), momentum != T(0), nesterov, leaf.initialized};
  Dispatch<T>(leaf, begin, end, lr, momentum, keep, wd, flags);
}

// One call's work. Threads claim parts from `next` until none is left, so a part is either
// unclaimed or being run: the caller, which runs parts too, never waits on a part that no
// thread has started (the pool's threads may all be busy), and uneven progress evens out.
template <typename T>
struct Pass {
  std::vector<Leaf<T>> leaves;
  int64_t total = 0, parts = 1;
  T lr, momentum, keep, wd;
  bool nesterov, maximize;
  std::atomic<int64_t> next{0}, done{0};

  void Run() {
    for (int64_t w; (w = next.fetch_add(1)) < parts;) {
      // part w is elements [w * total / parts, (w + 1) * total / parts) of the tree
      const int64_t lo = w * total / parts, hi = (w + 1) * total / parts;
      int64_t offset = 0;
      for (const Leaf<T>& leaf : leaves) {
        const int64_t begin = std::max(lo, offset), end = std::min(hi, offset + leaf.size);
        if (begin < end) {
          Update(leaf, begin - offset, end - offset, lr, momentum, keep, wd, nesterov, maximize);
        }
        offset += leaf.size;
        if (offset >= hi) break;
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <ffi::DataType dtype>
ffi::Error Step(ffi::ThreadPool pool, ffi::Buffer<dtype> hyper, ffi::Buffer<ffi::PRED> flags,
                ffi::RemainingArgs args, ffi::RemainingRets rets, int64_t offset, bool nesterov,
                bool maximize) {
  using T = ffi::NativeType<dtype>;
  const int64_t n = static_cast<int64_t>(args.size()) / 3;
  if (static_cast<int64_t>(args.size()) != 3 * n || static_cast<int64_t>(rets.size()) != 2 * n ||
      offset < 0 || offset + n > static_cast<int64_t>(flags.element_count())) {
    return ffi::Error::InvalidArgument(
        "sgdx_sgd_step: expected flags for leaves offset..offset+n, then n params, grads, buffers");
  }
  const T* h = hyper.typed_data();
  const bool* initialized = flags.typed_data() + offset;
  auto pass = std::make_shared<Pass<T>>();
  pass->lr = h[0], pass->momentum = h[1], pass->keep = T(1) - h[2], pass->wd = h[3];
  pass->nesterov = nesterov, pass->maximize = maximize;
  pass->leaves.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    auto p_in = args.get<ffi::AnyBuffer>(i);
    auto g_in = args.get<ffi::AnyBuffer>(n + i);
    auto b_in = args.get<ffi::AnyBuffer>(2 * n + i);
    auto p_out = rets.get<ffi::AnyBuffer>(i);
    auto b_out = rets.get<ffi::AnyBuffer>(n + i);
    if (!p_in.has_value() || !g_in.has_value() || !b_in.has_value() || !p_out.has_value() ||
        !b_out.has_value()) {
      return ffi::Error::InvalidArgument("sgdx_sgd_step: bad buffer");
    }
    T* out = reinterpret_cast<T*>((*p_out)->untyped_data());
    T* b = reinterpret_cast<T*>((*b_out)->untyped_data());
    const T* p = reinterpret_cast<const T*>(p_in->untyped_data());
    const int64_t size = static_cast<int64_t>(p_in->element_count());
    // The outputs alias the inputs when the caller donates them; copy when it does not.
    if (out != p) std::copy_n(p, size, out);
    p = out;
    const T* b_old = reinterpret_cast<const T*>(b_in->untyped_data());
    if (b != b_old) std::copy_n(b_old, size, b);
    const T* g = reinterpret_cast<const T*>(g_in->untyped_data());
    pass->leaves.push_back({p, out, g, b, size, initialized[i]});
    pass->total += size;
  }

  // Parts of at least 64K elements, four per thread (the pool's and the caller), and no more
  // threads than cores: XLA's pool has a thread per core, so the caller joining all of them
  // would make one thread more than there are cores, which runs the pass 3% slower.
  const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min<int64_t>(pool.num_threads() + 1, cores);
  pass->parts = std::max<int64_t>(1, std::min<int64_t>(4 * threads, pass->total >> 16));
  for (int64_t i = 1; i < std::min(threads, pass->parts); ++i) {
    pool.Schedule([pass] { pass->Run(); });
  }
  pass->Run();
  while (pass->done.load(std::memory_order_acquire) < pass->parts) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

#define SGDX_HANDLER(name, dtype)                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, Step<dtype>,                            \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<dtype>>()                \
                                    .Arg<ffi::Buffer<ffi::PRED>>()            \
                                    .RemainingArgs()                          \
                                    .RemainingRets()                          \
                                    .Attr<int64_t>("offset")                  \
                                    .Attr<bool>("nesterov")                   \
                                    .Attr<bool>("maximize"));

// What the loader finds by name; everything else stays inside the library (built with hidden
// visibility).
#pragma GCC visibility push(default)

// "<sha256 of this file> <jax version>", from the build, which the loader checks.
extern "C" const char* SgdxBuildInfo() { return SGDX_BUILD_INFO; }

// The XLA FFI API version of the headers this was built with ("major.minor"): a framework
// with an older API refuses the handlers, and refusing them at registration would take JAX's
// CPU backend down, so the loader compares it with the running jaxlib's first.
#define SGDX_STRINGIFY(x) #x
#define SGDX_STRING(x) SGDX_STRINGIFY(x)
extern "C" const char* SgdxFfiApiVersion() {
  return SGDX_STRING(XLA_FFI_API_MAJOR) "." SGDX_STRING(XLA_FFI_API_MINOR);
}

SGDX_HANDLER(SgdxSgdStepF32, ffi::F32)
SGDX_HANDLER(SgdxSgdStepF64, ffi::F64)

#pragma GCC visibility pop
