// The polynomial of `ops.bernstein_polynomial` and its backward pass on CPU,
// as XLA FFI handlers for JAX (`jax_cpu_kernel.py` compiles this file, once
// per degree).
//
// For a (rows, units) input, `Values` computes `ops._evaluate` and `Gradient`
// computes, in one pass over the rows, the input gradient and every
// per-neuron sum of `ops._gradient_and_sums` (same formulas, same order of
// operations): the `n + 1` basis sums `sum g t^k (1 - t)^(n - k)` and, for
// "linear" and "clip", the two sums for the ends. XLA-CPU runs those sums as
// one scalar loop (docs/performance.md); here a thread holds a block of 16
// neurons' sums in vector registers while it walks down the rows.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#ifndef DEGREE
#error "compile with -DDEGREE=n"
#endif

namespace {

constexpr int kDegree = DEGREE;
enum Mode { kPolynomial = 0, kClip = 1, kLinear = 2 };
// |t| beyond which linear extrapolation saturates (`ops._T_LIMIT`).
constexpr float kLimit = 1e30f;

typedef float Vector __attribute__((vector_size(64)));  // 16 floats

template <typename V>
V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
void Store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// clip(v, low, high) as XLA computes it: NaN stays NaN.
template <typename V>
V Clip(V v, V low, V high) {
  v = v < low ? low : v;
  return v > high ? high : v;
}

// Per-neuron constants for a block of neurons starting at `first`: the
// lower bound and the width.
template <typename V>
void LoadBounds(const float* bounds, int64_t first, V* lower, V* width) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  float lowers[kWidth], widths[kWidth];
  for (int i = 0; i < kWidth; ++i) {
    lowers[i] = bounds[2 * (first + i)];
    widths[i] = bounds[2 * (first + i) + 1] - lowers[i];
  }
  *lower = Load<V>(lowers);
  *width = Load<V>(widths);
}

// `sum_k columns[k] t^k (1 - t)^(n - k)` by `ops._sum_of_scaled_columns`'
// Horner loop in 1 - t, for a table of `degree + 1` columns.
template <int degree, typename V>
V HornerInOneMinusT(const V* columns, V t, V s) {
  V sum = columns[0];
  V power = t;
  for (int k = 1; k <= degree; ++k) {
    if (k > 1) power = power * t;
    sum = sum * s + columns[k] * power;
  }
  return sum;
}

struct GradientArguments {
  int64_t rows, units;
  const float *x, *upstream, *bounds, *slope_table;
  float *grad_x, *sums;
};

// The input gradient and sums of neurons [first, first + width of V).
template <int kMode, typename V>
void GradientOfNeurons(const GradientArguments& a, int64_t first) {
  constexpr int n = kDegree;
  constexpr int kSums = kMode == kPolynomial ? n + 1 : n + 3;
  const V zero = V{} + 0.0f, one = zero + 1.0f;
  V lower, width;
  LoadBounds(a.bounds, first, &lower, &width);
  V slope_columns[n];
  for (int k = 0; k < n; ++k) slope_columns[k] = Load<V>(a.slope_table + k * a.units + first);
  V sums[kSums];
  for (int k = 0; k < kSums; ++k) sums[k] = zero;

  for (int64_t row = 0; row < a.rows; ++row) {
    const int64_t at = row * a.units + first;
    const V upstream = Load<V>(a.upstream + at);
    const V t = (Load<V>(a.x + at) - lower) / width;
    const V basis_at = kMode == kPolynomial ? t : Clip(t, zero, one);
    const V s = one - basis_at;
    // The basis terms, `_basis_terms(basis_at, n, weight=upstream)`.
    V s_powers[n + 1];
    s_powers[0] = one;
    s_powers[1] = s;
    for (int k = 2; k <= n; ++k) s_powers[k] = s_powers[k - 1] * s;
    V weighted_power = upstream;
    for (int k = 0; k <= n; ++k) {
      if (k) weighted_power = weighted_power * basis_at;
      sums[k] += n - k ? weighted_power * s_powers[n - k] : weighted_power;
    }
    // dσ/dt (`_slope_in_t`).
    V slope = HornerInOneMinusT<n - 1>(slope_columns, basis_at, s);
    if (kMode == kLinear) {
      const V overshoot = Clip(t, zero - kLimit, zero + kLimit) - basis_at;
      const V above = overshoot < zero ? zero : overshoot;  // relu: NaN stays
      sums[n + 1] += upstream * (overshoot - above);
      sums[n + 2] += upstream * above;
    } else if (kMode == kClip) {
      const auto below = t < zero, beyond = t > one;
      sums[n + 1] += below ? upstream : zero;
      sums[n + 2] += beyond ? upstream : zero;
      slope = (below | beyond) ? zero : slope;
    }
    Store(a.grad_x + at, upstream * slope / width);
  }
  for (int k = 0; k < kSums; ++k) Store(a.sums + k * a.units + first, sums[k]);
}

struct ValueArguments {
  int64_t rows, units;
  const float *x, *bounds, *columns, *slope_lower, *bend;
  float* values;
};

// `ops._evaluate` of neurons [first, first + width of V).
template <int kMode, typename V>
void ValuesOfNeurons(const ValueArguments& a, int64_t first) {
  constexpr int n = kDegree;
  const V zero = V{} + 0.0f, one = zero + 1.0f;
  V lower, width;
  LoadBounds(a.bounds, first, &lower, &width);
  V columns[n + 1];
  for (int k = 0; k <= n; ++k) columns[k] = Load<V>(a.columns + k * a.units + first);
  V slope_lower = zero, bend = zero;
  if (kMode == kLinear) {
    slope_lower = Load<V>(a.slope_lower + first);
    bend = Load<V>(a.bend + first);
  }
  for (int64_t row = 0; row < a.rows; ++row) {
    const int64_t at = row * a.units + first;
    const V t = (Load<V>(a.x + at) - lower) / width;
    const V basis_at = kMode == kPolynomial ? t : Clip(t, zero, one);
    V value = HornerInOneMinusT<n>(columns, basis_at, one - basis_at);
    if (kMode == kLinear) {
      const V overshoot = Clip(t, zero - kLimit, zero + kLimit) - basis_at;
      const V above = overshoot < zero ? zero : overshoot;
      value = value + (slope_lower * overshoot + bend * above);
    }
    Store(a.values + at, value);
  }
}

// `for_neurons(Vector{}, first)` for every block of 16 neurons, then
// `for_neurons(0.0f, first)` for each neuron left, the blocks split over
// XLA's intra-op threads where the input is large enough to pay for the
// hand-off. `a` holds the rows and units of a (rows, units) input whose
// (units, 2) bound table is `bounds`.
template <typename Arguments, typename ForNeurons>
void OverNeurons(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x,
                 const ffi::Buffer<ffi::F32>& bounds, Arguments& a, ForNeurons for_neurons) {
  a.units = bounds.element_count() / 2;
  a.rows = a.units ? x.element_count() / a.units : 0;
  const int64_t rows = a.rows, units = a.units;
  constexpr int64_t kBlock = sizeof(Vector) / sizeof(float);
  constexpr int64_t kElementsPerTask = 1 << 16;
  auto range = [&](int64_t begin, int64_t end) {
    int64_t first = begin;
    for (; first + kBlock <= end; first += kBlock) for_neurons(Vector{}, first);
    for (; first < end; ++first) for_neurons(0.0f, first);
  };
  const int64_t blocks = (units + kBlock - 1) / kBlock;
  int64_t tasks = std::min<int64_t>(pool.num_threads(), blocks);
  tasks = std::min<int64_t>(tasks, rows * units / kElementsPerTask);
  if (tasks <= 1) return range(0, units);
  std::mutex mutex;
  std::condition_variable done;
  int64_t pending = tasks - 1;
  auto task_range = [&](int64_t task) {
    range(std::min(units, blocks * task / tasks * kBlock),
          std::min(units, blocks * (task + 1) / tasks * kBlock));
  };
  for (int64_t task = 1; task < tasks; ++task) {
    pool.Schedule([&, task] {
      task_range(task);
      std::lock_guard<std::mutex> lock(mutex);
      if (--pending == 0) done.notify_one();
    });
  }
  task_range(0);
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&] { return pending == 0; });
}

template <int kMode>
ffi::Error Gradient(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> upstream, ffi::Buffer<ffi::F32> bounds,
                    ffi::Buffer<ffi::F32> slope_table, ffi::ResultBuffer<ffi::F32> grad_x,
                    ffi::ResultBuffer<ffi::F32> sums) {
  GradientArguments a;
  a.x = x.typed_data();
  a.upstream = upstream.typed_data();
  a.bounds = bounds.typed_data();
  a.slope_table = slope_table.typed_data();
  a.grad_x = grad_x->typed_data();
  a.sums = sums->typed_data();
  OverNeurons(pool, x, bounds, a, [&](auto width, int64_t first) {
    GradientOfNeurons<kMode, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

template <int kMode>
ffi::Error Values(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> bounds,
                  ffi::Buffer<ffi::F32> columns, ffi::Buffer<ffi::F32> slope_lower,
                  ffi::Buffer<ffi::F32> bend, ffi::ResultBuffer<ffi::F32> values) {
  ValueArguments a;
  a.x = x.typed_data();
  a.bounds = bounds.typed_data();
  a.columns = columns.typed_data();
  a.slope_lower = slope_lower.typed_data();
  a.bend = bend.typed_data();
  a.values = values->typed_data();
  OverNeurons(pool, x, bounds, a, [&](auto width, int64_t first) {
    ValuesOfNeurons<kMode, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

}  // namespace

using F32 = ffi::Buffer<ffi::F32>;

#define KERAS_BERNSTEIN_GRADIENT(name, mode)                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, Gradient<mode>,                                 \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<F32>() /* x */                               \
                                    .Arg<F32>() /* upstream */                        \
                                    .Arg<F32>() /* bounds */                          \
                                    .Arg<F32>() /* slope table */                     \
                                    .Ret<F32>() /* input gradient */                  \
                                    .Ret<F32>() /* sums */);

#define KERAS_BERNSTEIN_VALUES(name, mode)                                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, Values<mode>,                                   \
                                ffi::Ffi::Bind()                                      \
                                    .Ctx<ffi::ThreadPool>()                           \
                                    .Arg<F32>() /* x */                               \
                                    .Arg<F32>() /* bounds */                          \
                                    .Arg<F32>() /* scaled coefficient columns */      \
                                    .Arg<F32>() /* slope at the lower bound */        \
                                    .Arg<F32>() /* change of slope at the upper one */ \
                                    .Ret<F32>() /* values */);

KERAS_BERNSTEIN_GRADIENT(PolynomialGradient, kPolynomial)
KERAS_BERNSTEIN_GRADIENT(ClipGradient, kClip)
KERAS_BERNSTEIN_GRADIENT(LinearGradient, kLinear)
KERAS_BERNSTEIN_VALUES(PolynomialValues, kPolynomial)
KERAS_BERNSTEIN_VALUES(ClipValues, kClip)
KERAS_BERNSTEIN_VALUES(LinearValues, kLinear)
