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
// Elements are processed in tiles of kW lanes held in small local arrays,
// every loop over the lanes innermost, so that the compiler vectorizes the
// whole pass. The transcendental functions are inline, branch-free float
// versions (Cephes-style, about 1-2 ulp; reciprocals by Newton steps, since
// the divider was the bottleneck) for the same reason. Each gate group of
// the GRU keeps param_units independent accumulators (a compile-time 10 for
// the default config). On x86-64 the hot loop is also compiled for
// x86-64-v3 (AVX2/FMA) and x86-64-v4 (AVX-512), picked at load time (GCC
// function multiversioning); the default clone is baseline x86-64, so the
// library is portable (no -march).
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

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kW = 16;  // lanes per tile
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

// kW lanes; GCC/Clang vector extensions, so the same source compiles to SSE2
// (4 ops per value), AVX2 (2) or AVX-512 (1).
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));

INL vf splat(float x) { return vf{} + x; }
INL vf vmin(vf a, vf b) { return a < b ? a : b; }
INL vf vmax(vf a, vf b) { return a > b ? a : b; }
INL vf vabs(vf a) { return (vf)((vi)a & 0x7fffffff); }
INL vf vsqrt(vf a) {
  vf r;
  for (int i = 0; i < kW; ++i) r[i] = __builtin_sqrtf(a[i]);
  return r;
}

INL vf exp_f(vf x) {
  x = vmin(vmax(x, splat(-87.0f)), splat(88.3762626647949f));
  // n = round(x / ln 2), by the 1.5 * 2^23 trick (no -ffast-math here).
  vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vf y = p * (r * r) + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * (vf)e;
}

// log(x) for x > 0 (finite, normal).
INL vf log_f(vf x) {
  vi b = (vi)x;
  vf e = __builtin_convertvector(((b >> 23) & 0xff) - 126, vf);
  vf m = (vf)((b & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  vi small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  vf z = m * m;
  vf p = splat(7.0376836292e-2f);
  p = p * m + -1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m + -1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m + -1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m + -2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  vf y = m * z * p;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + e * 0.693359375f;
}

// 1 / x for normal x > 0, without a divide (the divider is the bottleneck):
// a 4-bit guess from the exponent bits, then three Newton steps (4, 8, 16,
// 24+ bits); within ~2 ulp of the correctly rounded quotient.
INL vf recip_f(vf x) {
  vf r = (vf)(0x7ef311c3 - (vi)x);
  r = r * (2.0f - x * r);
  r = r * (2.0f - x * r);
  r = r * (2.0f - x * r);
  return r;
}

// exp(-x) is clamped to e^87 so that the reciprocal stays normal.
INL vf sigmoid_f(vf x) {
  return recip_f(1.0f + exp_f(vmin(-x, splat(87.0f))));
}

INL vf tanh_f(vf x) {
  vf a = vabs(x);
  // Small |x|: the odd polynomial (Cephes tanhf); else 1 - 2 / (e^2a + 1).
  vf z = x * x;
  vf p = splat(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f;
  p = p * z + -5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z + -3.33332819422e-1f;
  vf small = x + x * z * p;
  vf big = 1.0f - 2.0f * recip_f(exp_f(vmin(2.0f * a, splat(80.0f))) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}

// log(1 + u) for u >= 0.
INL vf log1p_f(vf u) {
  vf v = 1.0f + u;
  vf d = v - 1.0f;
  vf l = log_f(v);
  vf dd = d == 0.0f ? splat(1.0f) : d;
  return d == 0.0f ? u : l * (u / dd);
}

INL vf asinh_f(vf x) {
  vf a = vabs(x);
  vf big = log_f(vmax(a, splat(1.0f))) + 0.693147180559945309f;
  vf a2 = a * a;
  vf small = log1p_f(a + a2 / (1.0f + vsqrt(1.0f + a2)));
  vf r = a > 1e4f ? big : small;
  return x < 0.0f ? -r : r;
}

struct Pass {
  int P, T, F, K;
  int64_t flags, size;
  const float *wx, *wh, *wout, *shortcut, *bias, *scal;
  const float *g;
  const float *h, *acc, *ms, *scl, *inp, *log_lr, *am, *av;
  float *h_o, *acc_o, *ms_o, *scl_o, *inp_o, *log_lr_o, *am_o, *av_o, *step_o;
  bool has(int64_t f) const { return (flags & f) != 0; }
};

struct Piece {
  int64_t start, end;
  int32_t tensor;
  bool pad;
};

INL vf load(const float* src, int n) {
  vf v;
  if (n == kW) {
    std::memcpy(&v, src, sizeof v);
  } else {
    v = vf{};
    for (int w = 0; w < n; ++w) v[w] = src[w];
  }
  return v;
}

INL void store(float* dst, vf v, int n) {
  if (n == kW) {
    std::memcpy(dst, &v, sizeof v);
  } else {
    for (int w = 0; w < n; ++w) dst[w] = v[w];
  }
}

// One tile of n <= kW elements at i0; adds its sums (lanes) to `lsum`.
// PP: param_units if known at compile time, else 0.
template <int PP>
INL void tile(const Pass& c, int64_t i0, int n, const float* bias, bool pad,
              vf* lsum) {
  const int P = PP > 0 ? PP : c.P, T = c.T, F = c.F, P3 = 3 * P;
  const int64_t S = c.size;
  const float* s = c.scal;
  const bool dyn_out = c.has(kDynOutputScale);
  vf g = load(c.g + i0, n), inp = load(c.inp + i0, n);
  vf scl = load(c.scl + i0, n);
  vf llr = dyn_out ? load(c.log_lr + i0, n) : vf{};
  vf acc[kMaxT], ms[kMaxT], sc[kMaxT], feats[kMaxF], h[kMaxP], hn[kMaxP];
  for (int k = 0; k < T; ++k) {
    acc[k] = load(c.acc + k * S + i0, n);
    ms[k] = load(c.ms + k * S + i0, n);
  }
  for (int u = 0; u < P; ++u) h[u] = load(c.h + u * S + i0, n);

  // Features.
  vf dec = T > 1 ? inp : vf{};
  vf sd = s[kFirstStep] != 0.0f ? vf{} : scl;
  for (int k = 0; k < T; ++k) {
    if (k > 0) dec = vsqrt(dec);
    vf a = (1.0f - dec) * g + dec * acc[k];
    ms[k] = (1.0f - sd) * (a * a + kEpsMs) + sd * ms[k];
    acc[k] = a;
  }
  int f = 0;
  for (int k = 0; k < T; ++k, ++f) {
    sc[k] = c.has(kDynInputScaling) ? asinh_f(acc[k] / vsqrt(ms[k] + kEpsRms))
                                    : acc[k];
    feats[f] = sc[k];
  }
  if (c.has(kGradProducts) && T > 1) {
    for (int k = 0; k + 1 < T; ++k, ++f) feats[f] = sc[k] * sc[k + 1];
  }
  if (c.has(kLogMs)) {
    vf mean = vf{};
    for (int k = 0; k < T; ++k) {
      feats[f + k] = log_f(ms[k] + kEpsRms);
      mean = k == 0 ? feats[f] : mean + feats[f + k];
    }
    mean = mean / static_cast<float>(T);
    for (int k = 0; k < T; ++k, ++f) feats[f] = feats[f] - mean;
  }
  if (c.has(kRelativeLr)) feats[f++] = llr - s[kMeanLogLr];

  // The parameter GRU: r, z, then the candidate with r * h. Each gate group
  // keeps P independent accumulators (no serial chains of FMAs); with P a
  // compile-time constant they live in registers.
  vf rh[kMaxP], zg[kMaxP], a[kMaxP];
  for (int grp = 0; grp < 2; ++grp) {
    const int c0 = grp * P;
    for (int j = 0; j < P; ++j) a[j] = vf{};
    for (int q = 0; q < F; ++q) {
      const vf fq = feats[q];
      const float* wq = c.wx + q * P3 + c0;
      for (int j = 0; j < P; ++j) a[j] += wq[j] * fq;
    }
    for (int j = 0; j < P; ++j) a[j] += bias[c0 + j];
    for (int u = 0; u < P; ++u) {
      const vf hu = h[u];
      const float* wu = c.wh + u * P3 + c0;
      for (int j = 0; j < P; ++j) a[j] += wu[j] * hu;
    }
    if (grp == 0) {
      for (int j = 0; j < P; ++j) rh[j] = sigmoid_f(a[j]) * h[j];
    } else {
      for (int j = 0; j < P; ++j) zg[j] = sigmoid_f(a[j]);
    }
  }
  {
    const int c0 = 2 * P;
    for (int j = 0; j < P; ++j) a[j] = vf{};
    for (int q = 0; q < F; ++q) {
      const vf fq = feats[q];
      const float* wq = c.wx + q * P3 + c0;
      for (int j = 0; j < P; ++j) a[j] += wq[j] * fq;
    }
    for (int j = 0; j < P; ++j) a[j] += bias[c0 + j];
    for (int u = 0; u < P; ++u) {
      const vf ru = rh[u];
      const float* wu = c.wh + u * P3 + c0;
      for (int j = 0; j < P; ++j) a[j] += wu[j] * ru;
    }
    for (int j = 0; j < P; ++j)
      hn[j] = zg[j] * h[j] + (1.0f - zg[j]) * tanh_f(a[j]);
  }

  // Readouts.
  vf proj[4];
  for (int o = 0; o < 4; ++o) {
    proj[o] = vf{};
    for (int u = 0; u < P; ++u) proj[o] += c.wout[u * 4 + o] * hn[u];
  }
  vf d = proj[0];
  if (c.has(kShortcut)) {
    vf sh = vf{};
    for (int k = 0; k < T; ++k) sh += c.shortcut[k] * sc[k];
    d = d + sh;
  }
  if (c.has(kLearnableDecay)) {
    scl = sigmoid_f(proj[1] + s[kBScl]);
    inp = sigmoid_f(proj[2] + s[kBInp]);
  } else {
    scl = splat(0.93f);
    inp = splat(0.89f);
  }
  if (c.has(kNominalAdam)) {
    vf m = load(c.am + i0, n), v = load(c.av + i0, n);
    m = s[kB1] * m + s[kB1c] * g;
    v = s[kB2] * v + (s[kB2c] * g) * g;
    // 1e-30 under the root, as hrnn._param_pass.
    vf adam = (m / s[kBiasC1]) / (vsqrt(v / s[kBiasC2] + 1e-30f) +
                                  s[kAdamEps]);
    d = adam + d;
    store(c.am_o + i0, m, n);
    store(c.av_o + i0, v, n);
  }
  vf step;
  if (dyn_out) {
    vf x;
    if (s[kLrRange] > 0.0f) {
      // Anchored: the stored log-LR plus a bounded correction; the stored
      // one is kept (no clipping: it stays within the range).
      x = llr + s[kLrRange] * tanh_f(proj[3] + s[kBLr]);
      llr = pad ? vf{} : llr;
    } else {
      // The paper's: the log-LR integrates the readouts.
      x = (llr + proj[3]) + s[kBLr];
      x = x + (vmin(vmax(x, splat(kMinLogLr)), splat(s[kMaxLogLr])) - x);
      llr = pad ? vf{} : s[kLrMom] * llr + s[kLrMom1] * x;
    }
    step = exp_f(x + s[kOffset]) * d;
    store(c.log_lr_o + i0, llr, n);
  } else {
    step = (2.0f * sigmoid_f(proj[3] + s[kBLr])) * d;
  }

  // Stores.
  for (int u = 0; u < P; ++u) store(c.h_o + u * S + i0, hn[u], n);
  for (int k = 0; k < T; ++k) {
    store(c.acc_o + k * S + i0, acc[k], n);
    store(c.ms_o + k * S + i0, ms[k], n);
  }
  store(c.scl_o + i0, scl, n);
  store(c.inp_o + i0, inp, n);
  store(c.step_o + i0, step, n);

  // Sums (lanes): h (P), feats (F), d^2 (1).
  if (pad) return;
  vf valid;
  for (int w = 0; w < kW; ++w) valid[w] = w < n ? 1.0f : 0.0f;
  if (c.has(kTensorSums)) {
    for (int u = 0; u < P; ++u) lsum[u] += valid * hn[u];
    for (int q = 0; q < F; ++q) lsum[P + q] += valid * feats[q];
  }
  if (dyn_out && !c.has(kNominalAdam)) lsum[P + F] += valid * (d * d);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(LOPT_NO_MULTIVERSION)
#define LOPT_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define LOPT_CLONES
#endif

template <int PP>
INL void run_tiles(const Pass& c, const Piece& p, double* out) {
  vf lsum[kMaxP + kMaxF + 1];
  const int K = c.K;
  for (int k = 0; k < K; ++k) lsum[k] = vf{};
  for (int k = 0; k < K; ++k) out[k] = 0.0;
  const float* bias = c.bias + static_cast<int64_t>(p.tensor) * 3 * c.P;
  int tiles = 0;
  for (int64_t i = p.start; i < p.end; i += kW) {
    int n = static_cast<int>(std::min<int64_t>(kW, p.end - i));
    tile<PP>(c, i, n, bias, p.pad, lsum);
    // Flush the float lane sums every 16 tiles (256 elements, as a chunk).
    if (++tiles == 16 || i + kW >= p.end) {
      tiles = 0;
      for (int k = 0; k < K; ++k) {
        double t = 0.0;
        for (int w = 0; w < kW; ++w) t += lsum[k][w];
        out[k] += t;
        lsum[k] = vf{};
      }
    }
  }
}

// Runs one piece; writes its K sums (in double) to `out`.
LOPT_CLONES void run_piece(const Pass& c, const Piece& p, double* out) {
  if (c.P == 10) {
    run_tiles<10>(c, p, out);  // the default config
  } else {
    run_tiles<0>(c, p, out);
  }
}

struct Shared {
  Pass pass;
  std::vector<Piece> pieces;
  std::vector<double> sums;  // (num pieces, K)
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
                ffi::Buffer<ffi::F32> ms, ffi::Buffer<ffi::F32> scl,
                ffi::Buffer<ffi::F32> inp, ffi::Buffer<ffi::F32> log_lr,
                ffi::Buffer<ffi::F32> am, ffi::Buffer<ffi::F32> av,
                ffi::Buffer<ffi::F32> wx, ffi::Buffer<ffi::F32> wh,
                ffi::Buffer<ffi::F32> wout, ffi::Buffer<ffi::F32> shortcut,
                ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> scal,
                ffi::Buffer<ffi::S32> segs,
                ffi::ResultBuffer<ffi::F32> h_o,
                ffi::ResultBuffer<ffi::F32> acc_o,
                ffi::ResultBuffer<ffi::F32> ms_o,
                ffi::ResultBuffer<ffi::F32> scl_o,
                ffi::ResultBuffer<ffi::F32> inp_o,
                ffi::ResultBuffer<ffi::F32> log_lr_o,
                ffi::ResultBuffer<ffi::F32> am_o,
                ffi::ResultBuffer<ffi::F32> av_o,
                ffi::ResultBuffer<ffi::F32> step_o,
                ffi::ResultBuffer<ffi::F32> sums_o, int64_t flags,
                int64_t num_timescales, int64_t param_units,
                int64_t num_features, int64_t max_threads) {
  auto sh = std::make_shared<Shared>();
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
  c.scl = scl.typed_data(); c.inp = inp.typed_data();
  c.log_lr = log_lr.typed_data(); c.am = am.typed_data();
  c.av = av.typed_data();
  c.h_o = h_o->typed_data(); c.acc_o = acc_o->typed_data();
  c.ms_o = ms_o->typed_data(); c.scl_o = scl_o->typed_data();
  c.inp_o = inp_o->typed_data(); c.log_lr_o = log_lr_o->typed_data();
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
        .Arg<ffi::Buffer<ffi::F32>>()  // scl_decay
        .Arg<ffi::Buffer<ffi::F32>>()  // inp_decay
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
        .Ret<ffi::Buffer<ffi::F32>>()  // scl_decay
        .Ret<ffi::Buffer<ffi::F32>>()  // inp_decay
        .Ret<ffi::Buffer<ffi::F32>>()  // log_lr
        .Ret<ffi::Buffer<ffi::F32>>()  // adam_m
        .Ret<ffi::Buffer<ffi::F32>>()  // adam_v
        .Ret<ffi::Buffer<ffi::F32>>()  // step
        .Ret<ffi::Buffer<ffi::F32>>()  // sums
        .Attr<int64_t>("flags")
        .Attr<int64_t>("num_timescales")
        .Attr<int64_t>("param_units")
        .Attr<int64_t>("num_features")
        .Attr<int64_t>("max_threads"));
