// The HRNN optimizer's per-parameter pass as one loop (an XLA:CPU FFI call).
//
// It does, element by element, exactly the work of `hrnn._param_pass` over
// the whole state slab (features with dynamic input scaling, gradient
// products and relative log mean squares, the parameter GRU, the readouts,
// the learnable decays, nominal Adam, the log-LR update (the paper's
// integrating one, or the anchored one of `lr_correction_range > 0`) and the
// step), writes the new state slabs (aliased to the old ones, so XLA updates
// them in place when the state is donated) and the step, and accumulates the
// per-tensor sums that the tensor GRU and the output normalisation need, in
// the same pass. See `metatrain/hrnn_kernel.py` for the buffer layout.
//
// Elements are processed in tiles of W lanes held in small local arrays,
// every loop over the lanes innermost, so that the compiler vectorizes the
// whole pass. The transcendental functions are inline float versions
// (Cephes-style, about 1-2 ulp; divides and 1/sqrt as the ISA's estimate plus
// a Newton step, which keeps them off the slow divider) for the same reason. Each gate group of
// the GRU keeps param_units independent accumulators (a compile-time 10 for
// the default config). On x86-64 the pass is compiled three times, each
// with W the width of one register: baseline SSE2 (W=4), x86-64-v3 (AVX2
// and FMA, W=8) and x86-64-v4 (AVX-512, W=16); the best one the CPU has is
// picked at run time (the `isa` attribute can ask for a lower one). The
// library needs no -march, so it is portable.
//
// Work is split into pieces of at most kPiece elements, each with its own
// sums, which are added per tensor in piece order afterwards: the result
// does not depend on how many threads of XLA's intra-op pool took part.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxP = 32;  // param_units
constexpr int kMaxT = 8;  // num_timescales
constexpr int kMaxF = 3 * kMaxT + 1;  // features
constexpr int64_t kPiece = 1 << 14;  // elements per unit of parallel work
constexpr float kEpsMs = 1e-12f;
constexpr float kEpsRms = 1e-16f;
constexpr float kMinLogLr = -33.0f;

// Config flags (bit i of the `flags` attribute; see hrnn_kernel.py).
enum : int64_t {
  kDynInputScaling = 1 << 0,
  kGradProducts = 1 << 1,
  kLogMs = 1 << 2,
  kRelativeLr = 1 << 3,
  kLearnableDecay = 1 << 4,
  kDynOutputScale = 1 << 5,
  kShortcut = 1 << 6,
  kNominalAdam = 1 << 7,
  kTensorSums = 1 << 8,
};

// Scalars (the `scal` buffer).
enum {
  kFirstStep, kMeanLogLr, kBiasC1, kBiasC2, kBScl, kBInp, kBLr, kLrMom,
  kLrMom1, kOffset, kB1, kB1c, kB2, kB2c, kAdamEps, kMaxLogLr,
  kLrRange,  // lr_correction_range: > 0 anchors the log-LR (see the tile)
  kNumScal
};

#define INL inline __attribute__((always_inline))

struct Pass {
  int P, T, F, K;
  int64_t flags, size;
  const float *wx, *wh, *wout, *shortcut, *bias, *scal;
  const float *g;
  const float *h, *acc, *ms, *log_lr, *am, *av;
  float *h_o, *acc_o, *ms_o, *log_lr_o, *am_o, *av_o, *step_o;
  bool has(int64_t f) const { return (flags & f) != 0; }
};

struct Piece {
  int64_t start, end;
  int32_t tensor;
  bool pad;
};

// One copy of the pass per instruction set (hrnn_simd.inc), each with
// vectors of one register's width: wider types on a narrower set make GCC
// split and partly scalarize the code (7x slower on AVX2). Each copy is
// compiled for its set by a function-level target attribute over its whole
// region, so the library itself needs no -march and stays portable; `pick`
// chooses at run time. The attribute is spelled per compiler: Clang ignores
// `#pragma GCC target` and needs `#pragma clang attribute`, and GCC before 11
// does not know the `arch=x86-64-v3` names, so the sets are listed as
// features (x86-64-v3 and v4 as the psABI defines them), which GCC >= 9 and
// Clang >= 14 both accept.

#define LOPT_VEC_TYPES(W)                                       \
  constexpr int kW = W;                                         \
  typedef float vf __attribute__((vector_size(4 * W)));         \
  typedef int32_t vi __attribute__((vector_size(4 * W)));

// Baseline: SSE2 on x86-64 (NEON on aarch64), 4 lanes.
namespace base {
LOPT_VEC_TYPES(4)
#if defined(__x86_64__)
constexpr int kRcpSteps = 1;  // rcpps, rsqrtps: 12 bits, then one step
INL vf rcp_guess(vf x) { return (vf)_mm_rcp_ps((__m128)x); }
INL vf rsqrt_guess(vf x) { return (vf)_mm_rsqrt_ps((__m128)x); }
#else
constexpr int kRcpSteps = 3;  // 4 bits from the exponent: 4, 8, 16, 24+
INL vf rcp_guess(vf x) { return (vf)(0x7ef311c3 - (vi)x); }
INL vf rsqrt_guess(vf x) { return (vf)(0x5f3759df - ((vi)x >> 1)); }
#endif
#include "hrnn_simd.inc"
}  // namespace base

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LOPT_X86 1

// x86-64-v3 and x86-64-v4 (the psABI levels) as feature lists, written out
// in each pragma (GCC's takes no macros).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target( \
    "avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse3,ssse3,sse4.1,sse4.2,xsave"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse3,ssse3,sse4.1,sse4.2,xsave")
#endif
namespace avx2 {
LOPT_VEC_TYPES(8)
constexpr int kRcpSteps = 1;
INL vf rcp_guess(vf x) { return (vf)_mm256_rcp_ps((__m256)x); }
INL vf rsqrt_guess(vf x) { return (vf)_mm256_rsqrt_ps((__m256)x); }
#include "hrnn_simd.inc"
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target( \
    "avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse3,ssse3,sse4.1,sse4.2,xsave,avx512f,avx512bw,avx512cd,avx512dq,avx512vl"))), apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse3,ssse3,sse4.1,sse4.2,xsave,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")
#endif
namespace avx512 {
LOPT_VEC_TYPES(16)
constexpr int kRcpSteps = 1;  // vrcp14ps, vrsqrt14ps: 14 bits
INL vf rcp_guess(vf x) {
  return (vf)_mm512_maskz_rcp14_ps(0xffff, (__m512)x);
}
INL vf rsqrt_guess(vf x) {
  return (vf)_mm512_maskz_rsqrt14_ps(0xffff, (__m512)x);
}
#include "hrnn_simd.inc"
}  // namespace avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

// Instruction sets (the `isa` attribute; 0 picks the best this CPU has).
enum Isa : int64_t { kIsaAuto = 0, kIsaBase = 1, kIsaAvx2 = 2, kIsaAvx512 = 3 };

using PieceFn = void (*)(const Pass&, const Piece&, double*);

// The best instruction set this CPU has (at most `want`, when not auto).
int64_t resolve_isa(int64_t want) {
#ifdef LOPT_X86
  static const int64_t best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
      return static_cast<int64_t>(kIsaAvx512);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return static_cast<int64_t>(kIsaAvx2);
    return static_cast<int64_t>(kIsaBase);
  }();
  return want == kIsaAuto ? best : std::min(want, best);
#else
  (void)want;
  return kIsaBase;
#endif
}

PieceFn pick(int64_t isa) {
  switch (resolve_isa(isa)) {
#ifdef LOPT_X86
    case kIsaAvx512: return avx512::run_piece;
    case kIsaAvx2: return avx2::run_piece;
#endif
    default: return base::run_piece;
  }
}

struct Shared {
  Pass pass;
  std::vector<Piece> pieces;
  std::vector<double> sums;  // (num pieces, K)
  PieceFn run_piece = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void work() {
    const int64_t np = static_cast<int64_t>(pieces.size());
    for (;;) {
      int64_t i = next.fetch_add(1);
      if (i >= np) return;
      run_piece(pass, pieces[i], sums.data() + i * pass.K);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Impl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> acc,
                ffi::Buffer<ffi::F32> ms, ffi::Buffer<ffi::F32> log_lr,
                ffi::Buffer<ffi::F32> am, ffi::Buffer<ffi::F32> av,
                ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                ffi::Buffer<ffi::F32> wout, ffi::Buffer<ffi::F32> shortcut,
                ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> scal,
                ffi::Buffer<ffi::S32> segs,
                ffi::ResultBuffer<ffi::F32> h_o,
                ffi::ResultBuffer<ffi::F32> acc_o,
                ffi::ResultBuffer<ffi::F32> ms_o,
                ffi::ResultBuffer<ffi::F32> log_lr_o,
                ffi::ResultBuffer<ffi::F32> am_o,
                ffi::ResultBuffer<ffi::F32> av_o,
                ffi::ResultBuffer<ffi::F32> step_o,
                ffi::ResultBuffer<ffi::F32> sums_o, int64_t flags,
                int64_t num_timescales, int64_t param_units,
                int64_t num_features, int64_t max_threads, int64_t isa) {
  auto sh = std::make_shared<Shared>();
  sh->run_piece = pick(isa);
  Pass& c = sh->pass;
  c.P = static_cast<int>(param_units);
  c.T = static_cast<int>(num_timescales);
  c.F = static_cast<int>(num_features);
  c.K = c.P + c.F + 1;
  c.flags = flags;
  c.size = static_cast<int64_t>(g.element_count());
  if (c.P < 1 || c.P > kMaxP || c.T < 1 || c.T > kMaxT || c.F > kMaxF)
    return ffi::Error::InvalidArgument("hrnn_param_pass: unsupported sizes");
  if (h.element_count() != static_cast<size_t>(c.P * c.size) ||
      acc.element_count() != static_cast<size_t>(c.T * c.size) ||
      wx.element_count() != static_cast<size_t>(c.F * 3 * c.P) ||
      wh.element_count() != static_cast<size_t>(c.P * 3 * c.P) ||
      wout.element_count() != static_cast<size_t>(c.P * 4) ||
      scal.element_count() != kNumScal)
    return ffi::Error::InvalidArgument("hrnn_param_pass: bad buffer sizes");
  const int64_t nt = static_cast<int64_t>(segs.element_count() / 3);
  if (bias.element_count() != static_cast<size_t>(nt * 3 * c.P) ||
      sums_o->element_count() != static_cast<size_t>(nt * c.K))
    return ffi::Error::InvalidArgument("hrnn_param_pass: bad table sizes");
  c.wx = wx.typed_data(); c.wh = wh.typed_data(); c.wout = wout.typed_data();
  c.shortcut = shortcut.typed_data(); c.bias = bias.typed_data();
  c.scal = scal.typed_data(); c.g = g.typed_data();
  c.h = h.typed_data(); c.acc = acc.typed_data(); c.ms = ms.typed_data();
  c.log_lr = log_lr.typed_data(); c.am = am.typed_data();
  c.av = av.typed_data();
  c.h_o = h_o->typed_data(); c.acc_o = acc_o->typed_data();
  c.ms_o = ms_o->typed_data(); c.log_lr_o = log_lr_o->typed_data();
  c.am_o = am_o->typed_data(); c.av_o = av_o->typed_data();
  c.step_o = step_o->typed_data();

  // Pieces: each tensor's real elements, then its padding, in kPiece parts.
  const int32_t* sg = segs.typed_data();
  for (int64_t t = 0; t < nt; ++t) {
    const int64_t start = sg[3 * t], n = sg[3 * t + 1], end = sg[3 * t + 2];
    if (start < 0 || n < 0 || start + n > end || end > c.size)
      return ffi::Error::InvalidArgument("hrnn_param_pass: bad segments");
    for (int64_t a = start; a < start + n; a += kPiece)
      sh->pieces.push_back({a, std::min(a + kPiece, start + n),
                            static_cast<int32_t>(t), false});
    for (int64_t a = start + n; a < end; a += kPiece)
      sh->pieces.push_back({a, std::min(a + kPiece, end),
                            static_cast<int32_t>(t), true});
  }
  const int64_t np = static_cast<int64_t>(sh->pieces.size());
  sh->sums.assign(np * c.K, 0.0);

  int64_t helpers = std::min<int64_t>(pool.num_threads(), max_threads - 1);
  helpers = std::min<int64_t>(helpers, np - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([sh] { sh->work(); });
  sh->work();
  while (sh->done.load(std::memory_order_acquire) < np)
    std::this_thread::yield();

  // Per-tensor sums, in piece order.
  float* out = sums_o->typed_data();
  std::vector<double> tot(nt * c.K, 0.0);
  for (int64_t i = 0; i < np; ++i) {
    const Piece& p = sh->pieces[i];
    for (int k = 0; k < c.K; ++k) tot[p.tensor * c.K + k] += sh->sums[i * c.K + k];
  }
  for (int64_t i = 0; i < nt * c.K; ++i) out[i] = static_cast<float>(tot[i]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    LoptHrnnParamPass, Impl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()  // g
        .Arg<ffi::Buffer<ffi::F32>>()  // h
        .Arg<ffi::Buffer<ffi::F32>>()  // acc
        .Arg<ffi::Buffer<ffi::F32>>()  // ms
        .Arg<ffi::Buffer<ffi::F32>>()  // log_lr
        .Arg<ffi::Buffer<ffi::F32>>()  // adam_m
        .Arg<ffi::Buffer<ffi::F32>>()  // adam_v
        .Arg<ffi::Buffer<ffi::F32>>()  // wx
        .Arg<ffi::Buffer<ffi::F32>>()  // wh
        .Arg<ffi::Buffer<ffi::F32>>()  // wout
        .Arg<ffi::Buffer<ffi::F32>>()  // shortcut
        .Arg<ffi::Buffer<ffi::F32>>()  // bias table
        .Arg<ffi::Buffer<ffi::F32>>()  // scalars
        .Arg<ffi::Buffer<ffi::S32>>()  // segments
        .Ret<ffi::Buffer<ffi::F32>>()  // h
        .Ret<ffi::Buffer<ffi::F32>>()  // acc
        .Ret<ffi::Buffer<ffi::F32>>()  // ms
        .Ret<ffi::Buffer<ffi::F32>>()  // log_lr
        .Ret<ffi::Buffer<ffi::F32>>()  // adam_m
        .Ret<ffi::Buffer<ffi::F32>>()  // adam_v
        .Ret<ffi::Buffer<ffi::F32>>()  // step
        .Ret<ffi::Buffer<ffi::F32>>()  // sums
        .Attr<int64_t>("flags")
        .Attr<int64_t>("num_timescales")
        .Attr<int64_t>("param_units")
        .Attr<int64_t>("num_features")
        .Attr<int64_t>("max_threads")
        .Attr<int64_t>("isa"));

// The instruction set `isa` resolves to on this CPU (for reports and tests):
// 1 baseline, 2 AVX2+FMA, 3 AVX-512.
extern "C" int64_t LoptHrnnIsa(int64_t isa) { return resolve_isa(isa); }
