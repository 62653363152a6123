// The Bernstein polynomial and its backward pass on CPU, for a (rows, units)
// input: what the C++ kernels of both backends compute, the same formulas in
// the same order of operations as `keras_bernstein._formula`. Two front ends
// include this file: `bernstein_cpu.cc` (XLA FFI handlers, JAX) and
// `bernstein_tensorflow.cc` (TensorFlow ops); each is compiled once per
// degree, with -DDEGREE=n and the extrapolation modes' indices
// (-DKERAS_BERNSTEIN_MODE_LINEAR=i, ..., `cpu_kernels._MODE_DEFINES`).
//
// `ValuesOfNeurons` computes `_formula._evaluate` and `GradientOfNeurons`
// computes, in one pass over the rows, the input gradient and every
// per-neuron sum of `_formula._gradient_and_sums`: the `n + 1` basis sums
// `sum g t^k (1 - t)^(n - k)` and, for "linear" and "clip", the two sums for
// the ends. With `kNormalized` they do the same for
// `ops.batch_normalized_bernstein_polynomial`: the batch statistics and the
// normalization in the forward pass, the normalization's two sums and its
// whole input gradient (a second pass over the rows) in the backward. XLA-CPU
// runs those sums as one scalar loop; here a thread
// holds a block of 16 neurons' sums in vector registers while it walks down
// the rows.
#ifndef KERAS_BERNSTEIN_BERNSTEIN_CPU_H_
#define KERAS_BERNSTEIN_BERNSTEIN_CPU_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>

#ifndef DEGREE
#error "compile with -DDEGREE=n"
#endif
#if !defined(KERAS_BERNSTEIN_MODE_LINEAR) || !defined(KERAS_BERNSTEIN_MODE_CLIP) || \
    !defined(KERAS_BERNSTEIN_MODE_POLYNOMIAL) || !defined(KERAS_BERNSTEIN_MODES)
#error "compile with the extrapolation modes' indices (cpu_kernels._MODE_DEFINES)"
#endif

// Internal linkage: every degree's library holds its own copies, which the
// dynamic linker must not merge (TensorFlow loads op libraries globally).
namespace keras_bernstein {
namespace {

constexpr int kDegree = DEGREE;
// The extrapolation modes, numbered as in `_formula.EXTRAPOLATION_MODES`;
// every front end takes a mode as that integer.
enum Mode {
  kLinear = KERAS_BERNSTEIN_MODE_LINEAR,
  kClip = KERAS_BERNSTEIN_MODE_CLIP,
  kPolynomial = KERAS_BERNSTEIN_MODE_POLYNOMIAL,
};
static_assert(KERAS_BERNSTEIN_MODES == 3, "a mode of _formula.EXTRAPOLATION_MODES has no kernel");

// Whether `mode` is one of `Mode`'s; then `run(std::integral_constant<int,
// mode>())`, so that each mode's loops are compiled for it.
template <typename Run>
bool WithMode(int mode, Run run) {
  switch (mode) {
    case kLinear:
      run(std::integral_constant<int, kLinear>());
      return true;
    case kClip:
      run(std::integral_constant<int, kClip>());
      return true;
    case kPolynomial:
      run(std::integral_constant<int, kPolynomial>());
      return true;
  }
  return false;
}

// The number of sums `GradientOfNeurons` returns per neuron.
constexpr int SumCount(int mode, bool normalized) {
  return (mode == kPolynomial ? kDegree + 1 : kDegree + 3) + (normalized ? 2 : 0);
}

// |t| beyond which linear extrapolation saturates (`_formula._T_LIMIT`).
constexpr float kLimit = 1e30f;

typedef float Vector __attribute__((vector_size(64)));  // 16 floats
typedef double WideVector __attribute__((vector_size(128)));  // 16 doubles

// The float64 accumulator of a float or a Vector, and the conversions.
template <typename V>
struct Wide {
  using type = double;
};
template <>
struct Wide<Vector> {
  using type = WideVector;
};
template <typename V>
using WideOf = typename Wide<V>::type;

template <typename V>
WideOf<V> Widen(V v) {
  if constexpr (std::is_same_v<V, float>) {
    return v;
  } else {
    return __builtin_convertvector(v, WideOf<V>);
  }
}

template <typename V>
V Narrow(WideOf<V> w) {
  if constexpr (std::is_same_v<V, float>) {
    return static_cast<float>(w);
  } else {
    return __builtin_convertvector(w, V);
  }
}

// Rows summed in float32 before the sums go into float64. Float32 sums over
// a whole batch drift (2^20 rows of 1000 put the mean off by 10); blocks of
// 64 rows err by at most 64 roundings, and the hot loop stays in float32.
constexpr int64_t kRowsPerBlock = 64;

// `totals[k] = sum over rows of what terms(row, sums) adds to sums[k]`, for
// `kCount` sums: float32 within blocks of rows, float64 across them.
template <int kCount, typename V, typename Terms>
void SumOverRows(int64_t rows, Terms terms, WideOf<V>* totals) {
  for (int k = 0; k < kCount; ++k) totals[k] = WideOf<V>{} + 0.0;
  for (int64_t begin = 0; begin < rows; begin += kRowsPerBlock) {
    const int64_t end = std::min(rows, begin + kRowsPerBlock);
    V sums[kCount];
    for (int k = 0; k < kCount; ++k) sums[k] = V{} + 0.0f;
    for (int64_t row = begin; row < end; ++row) terms(row, sums);
    for (int k = 0; k < kCount; ++k) totals[k] += Widen(sums[k]);
  }
}

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

// `sum_k columns[k] t^k (1 - t)^(n - k)` by `_formula._sum_of_scaled_columns`'
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

// What a handler passes to the loops over its neurons. Arrays are row-major,
// (rows, units) or per neuron (units,); tables are degree axis first.
struct Arguments {
  int64_t rows = 0, units = 0;
  const float* x = nullptr;
  const float* upstream = nullptr;     // gradients
  const float* bounds = nullptr;       // (units, 2)
  const float* table = nullptr;        // coefficient columns, or the slope's
  const float* slope_lower = nullptr;  // values, "linear"
  const float* bend = nullptr;         // values, "linear"
  const float* scale = nullptr;        // batch-normalized only
  const float* offset = nullptr;       // batch-normalized only
  const float* mean_in = nullptr;      // batch-normalized gradients
  const float* variance_in = nullptr;  // batch-normalized gradients
  float* mean_out = nullptr;           // batch-normalized values
  float* variance_out = nullptr;       // batch-normalized values
  float* out = nullptr;                // values or input gradient
  float* sums = nullptr;               // gradients
  float epsilon = 0.0f;
};

// `1 / sqrt(variance + epsilon)`, lane by lane (`_formula._inverse_deviation`).
template <typename V>
V InverseDeviation(V variance, float epsilon) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  float lanes[kWidth];
  std::memcpy(lanes, &variance, sizeof(V));
  for (int i = 0; i < kWidth; ++i) lanes[i] = 1.0f / std::sqrt(lanes[i] + epsilon);
  return Load<V>(lanes);
}

// The mean and (biased) variance over the rows (`_formula._batch_statistics`):
// a first mean, then the deviations from it and their squares, which
// correct the mean and give the variance without cancellation.
template <typename V>
void Moments(const Arguments& a, int64_t first, V* mean, V* variance) {
  const WideOf<V> count = WideOf<V>{} + static_cast<double>(a.rows);
  auto x = [&](int64_t row) { return Load<V>(a.x + row * a.units + first); };
  WideOf<V> total;
  SumOverRows<1, V>(a.rows, [&](int64_t row, V* sums) { sums[0] += x(row); }, &total);
  const V shift = Narrow<V>(total / count);
  WideOf<V> deviations[2];
  SumOverRows<2, V>(
      a.rows,
      [&](int64_t row, V* sums) {
        const V deviation = x(row) - shift;
        sums[0] += deviation;
        sums[1] += deviation * deviation;
      },
      deviations);
  const WideOf<V> correction = deviations[0] / count;
  const WideOf<V> squares = deviations[1] / count - correction * correction;
  *mean = Narrow<V>(Widen(shift) + correction);
  *variance = Narrow<V>(squares < 0.0 ? WideOf<V>{} + 0.0 : squares);
}

// `_formula._evaluate` of neurons [first, first + width of V), of the
// batch-normalized input where `kNormalized` (`_formula._evaluate_batch_normalized`,
// whose batch statistics it also stores).
template <int kMode, bool kNormalized, typename V>
void ValuesOfNeurons(const Arguments& a, int64_t first) {
  constexpr int n = kDegree;
  const V zero = V{} + 0.0f, one = zero + 1.0f;
  V lower, width;
  LoadBounds(a.bounds, first, &lower, &width);
  V columns[n + 1];
  for (int k = 0; k <= n; ++k) columns[k] = Load<V>(a.table + k * a.units + first);
  V slope_lower = zero, bend = zero;
  if (kMode == kLinear) {
    slope_lower = Load<V>(a.slope_lower + first);
    bend = Load<V>(a.bend + first);
  }
  V mean = zero, factor = one, offset = zero;
  if (kNormalized) {
    V variance;
    Moments(a, first, &mean, &variance);
    Store(a.mean_out + first, mean);
    Store(a.variance_out + first, variance);
    factor = InverseDeviation(variance, a.epsilon) * Load<V>(a.scale + first);
    offset = Load<V>(a.offset + first);
  }
  for (int64_t row = 0; row < a.rows; ++row) {
    const int64_t at = row * a.units + first;
    V input = Load<V>(a.x + at);
    if (kNormalized) input = (input - mean) * factor + offset;
    const V t = (input - lower) / width;
    const V basis_at = kMode == kPolynomial ? t : Clip(t, zero, one);
    V value = HornerInOneMinusT<n>(columns, basis_at, one - basis_at);
    if (kMode == kLinear) {
      const V overshoot = Clip(t, zero - kLimit, zero + kLimit) - basis_at;
      const V above = overshoot < zero ? zero : overshoot;  // relu: NaN stays
      value = value + (slope_lower * overshoot + bend * above);
    }
    Store(a.out + at, value);
  }
}

// The input gradient and the per-neuron sums of neurons [first, first +
// width of V) (`_formula._gradient_and_sums`). Where `kNormalized`, of the
// batch-normalized polynomial with the forward pass's statistics: the sums
// end with those of the normalization's offset and scale, and a second pass
// over the rows turns the polynomial's input gradient into the batch
// normalization's (`ops._with_lean_batch_normalized_gradient`).
template <int kMode, bool kNormalized, typename V>
void GradientOfNeurons(const Arguments& a, int64_t first) {
  constexpr int n = kDegree;
  constexpr int kPolynomialSums = SumCount(kMode, false);
  constexpr int kSums = SumCount(kMode, kNormalized);
  const V zero = V{} + 0.0f, one = zero + 1.0f;
  V lower, width;
  LoadBounds(a.bounds, first, &lower, &width);
  V slope_columns[n];
  for (int k = 0; k < n; ++k) slope_columns[k] = Load<V>(a.table + k * a.units + first);
  V mean = zero, inverse_deviation = one, scale = one, offset = zero;
  if (kNormalized) {
    mean = Load<V>(a.mean_in + first);
    inverse_deviation = InverseDeviation(Load<V>(a.variance_in + first), a.epsilon);
    scale = Load<V>(a.scale + first);
    offset = Load<V>(a.offset + first);
  }
  auto terms = [&](int64_t row, V* sums) {
    const int64_t at = row * a.units + first;
    const V upstream = Load<V>(a.upstream + at);
    V input = Load<V>(a.x + at), normalized = zero;
    if (kNormalized) {
      normalized = (input - mean) * inverse_deviation;
      input = normalized * scale + offset;
    }
    const V t = (input - lower) / width;
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
      const V above = overshoot < zero ? zero : overshoot;
      sums[n + 1] += upstream * (overshoot - above);
      sums[n + 2] += upstream * above;
    } else if (kMode == kClip) {
      const auto below = t < zero, beyond = t > one;
      sums[n + 1] += below ? upstream : zero;
      sums[n + 2] += beyond ? upstream : zero;
      slope = (below | beyond) ? zero : slope;
    }
    const V gradient = upstream * slope / width;
    if (kNormalized) {
      sums[kPolynomialSums] += gradient;
      sums[kPolynomialSums + 1] += gradient * normalized;
    }
    Store(a.out + at, gradient);
  };
  WideOf<V> totals[kSums];
  SumOverRows<kSums, V>(a.rows, terms, totals);
  for (int k = 0; k < kSums; ++k) Store(a.sums + k * a.units + first, Narrow<V>(totals[k]));
  if (!kNormalized) return;
  const WideOf<V> count = WideOf<V>{} + static_cast<double>(a.rows);
  const V mean_gradient = Narrow<V>(totals[kPolynomialSums] / count);
  const V mean_product = Narrow<V>(totals[kPolynomialSums + 1] / count);
  const V factor = scale * inverse_deviation;
  for (int64_t row = 0; row < a.rows; ++row) {
    const int64_t at = row * a.units + first;
    const V normalized = (Load<V>(a.x + at) - mean) * inverse_deviation;
    const V centered = Load<V>(a.out + at) - (mean_gradient + normalized * mean_product);
    Store(a.out + at, factor * centered);
  }
}

// `for_neurons(Vector{}, first)` for every block of 16 neurons, then
// `for_neurons(0.0f, first)` for each neuron left, the blocks split into
// tasks over `pool`'s threads (`num_threads()`, `Schedule(task)`) where the
// input is large enough to pay for the hand-off.
//
// The caller never waits for a task that is only queued: XLA runs
// independent custom calls at once on the same pool, and two calls each
// waiting for work queued behind the other would deadlock. So the caller
// and the scheduled helpers all take task numbers from one counter; the
// caller runs whatever the helpers have not taken, then waits only for the
// helpers that have started (they never wait, so they finish). A helper that
// starts after the caller is done finds the work closed and returns: it
// touches only the state it co-owns (`Tasks`), never the caller's frame.
struct Tasks {
  explicit Tasks(int64_t count) : count(count) {}
  const int64_t count;
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  std::condition_variable finished;
  int64_t running = 0;  // helpers inside `Take`
  bool closed = false;  // the caller is done taking tasks
};

// Runs `run(task)` for task numbers taken from `tasks` until none is left.
template <typename Run>
void Take(Tasks& tasks, const Run& run) {
  for (int64_t task; (task = tasks.next.fetch_add(1)) < tasks.count;) run(task);
}

template <typename Pool, typename ForNeurons>
void OverNeurons(Pool& pool, int64_t rows, int64_t units, ForNeurons for_neurons) {
  constexpr int64_t kBlock = sizeof(Vector) / sizeof(float);
  constexpr int64_t kElementsPerTask = 1 << 16;
  auto range = [&](int64_t begin, int64_t end) {
    int64_t first = begin;
    for (; first + kBlock <= end; first += kBlock) for_neurons(Vector{}, first);
    for (; first < end; ++first) for_neurons(0.0f, first);
  };
  const int64_t blocks = (units + kBlock - 1) / kBlock;
  int64_t count = std::min<int64_t>(pool.num_threads(), blocks);
  count = std::min<int64_t>(count, rows * units / kElementsPerTask);
  if (count <= 1) return range(0, units);
  auto run = [&](int64_t task) {
    range(std::min(units, blocks * task / count * kBlock),
          std::min(units, blocks * (task + 1) / count * kBlock));
  };
  using Run = decltype(run);
  auto tasks = std::make_shared<Tasks>(count);
  const Run* shared_run = &run;  // valid while a helper is `running`
  for (int64_t helper = 1; helper < count; ++helper) {
    pool.Schedule([tasks, shared_run] {
      {
        std::lock_guard<std::mutex> lock(tasks->mutex);
        if (tasks->closed) return;
        ++tasks->running;
      }
      Take(*tasks, *shared_run);
      std::lock_guard<std::mutex> lock(tasks->mutex);
      if (--tasks->running == 0 && tasks->closed) tasks->finished.notify_all();
    });
  }
  Take(*tasks, run);
  std::unique_lock<std::mutex> lock(tasks->mutex);
  tasks->closed = true;
  tasks->finished.wait(lock, [&] { return tasks->running == 0; });
}

}  // namespace
}  // namespace keras_bernstein

#endif  // KERAS_BERNSTEIN_BERNSTEIN_CPU_H_
