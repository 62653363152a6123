// The Bernstein kernels of `bernstein_cpu.h` as XLA FFI handlers, for JAX
// (`cpu_kernels.py` compiles this file for JAX, once per degree): for each
// extrapolation mode, `Values`, `Gradient`, `BatchNormalizedValues` and
// `BatchNormalizedGradient`.
#include "bernstein_cpu.h"

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;

namespace {

using namespace keras_bernstein;

// `OverNeurons` for a (rows, units) input `x` whose (units, 2) bound table
// is `bounds`; sets `a`'s rows and units.
template <typename ForNeurons>
void OverNeuronsOf(ffi::ThreadPool& pool, const F32& x, const F32& bounds, Arguments& a,
                   ForNeurons for_neurons) {
  a.units = bounds.element_count() / 2;
  a.rows = a.units ? x.element_count() / a.units : 0;
  OverNeurons(pool, a.rows, a.units, for_neurons);
}

template <int kMode>
ffi::Error Gradient(ffi::ThreadPool pool, F32 x, F32 upstream, F32 bounds, F32 slope_table,
                    ffi::ResultBuffer<ffi::F32> grad_x, ffi::ResultBuffer<ffi::F32> sums) {
  Arguments a;
  a.x = x.typed_data();
  a.upstream = upstream.typed_data();
  a.bounds = bounds.typed_data();
  a.table = slope_table.typed_data();
  a.out = grad_x->typed_data();
  a.sums = sums->typed_data();
  OverNeuronsOf(pool, x, bounds, a, [&](auto width, int64_t first) {
    GradientOfNeurons<kMode, false, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

template <int kMode>
ffi::Error Values(ffi::ThreadPool pool, F32 x, F32 bounds, F32 columns, F32 slope_lower,
                  F32 bend, ffi::ResultBuffer<ffi::F32> values) {
  Arguments a;
  a.x = x.typed_data();
  a.bounds = bounds.typed_data();
  a.table = columns.typed_data();
  a.slope_lower = slope_lower.typed_data();
  a.bend = bend.typed_data();
  a.out = values->typed_data();
  OverNeuronsOf(pool, x, bounds, a, [&](auto width, int64_t first) {
    ValuesOfNeurons<kMode, false, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

template <int kMode>
ffi::Error BatchNormalizedGradient(ffi::ThreadPool pool, F32 x, F32 upstream, F32 mean,
                                   F32 variance, F32 scale, F32 offset, F32 bounds,
                                   F32 slope_table, float epsilon,
                                   ffi::ResultBuffer<ffi::F32> grad_x,
                                   ffi::ResultBuffer<ffi::F32> sums) {
  Arguments a;
  a.x = x.typed_data();
  a.upstream = upstream.typed_data();
  a.mean_in = mean.typed_data();
  a.variance_in = variance.typed_data();
  a.scale = scale.typed_data();
  a.offset = offset.typed_data();
  a.bounds = bounds.typed_data();
  a.table = slope_table.typed_data();
  a.epsilon = epsilon;
  a.out = grad_x->typed_data();
  a.sums = sums->typed_data();
  OverNeuronsOf(pool, x, bounds, a, [&](auto width, int64_t first) {
    GradientOfNeurons<kMode, true, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

template <int kMode>
ffi::Error BatchNormalizedValues(ffi::ThreadPool pool, F32 x, F32 scale, F32 offset,
                                 F32 bounds, F32 columns, F32 slope_lower, F32 bend,
                                 float epsilon, ffi::ResultBuffer<ffi::F32> values,
                                 ffi::ResultBuffer<ffi::F32> mean,
                                 ffi::ResultBuffer<ffi::F32> variance) {
  Arguments a;
  a.x = x.typed_data();
  a.scale = scale.typed_data();
  a.offset = offset.typed_data();
  a.bounds = bounds.typed_data();
  a.table = columns.typed_data();
  a.slope_lower = slope_lower.typed_data();
  a.bend = bend.typed_data();
  a.epsilon = epsilon;
  a.out = values->typed_data();
  a.mean_out = mean->typed_data();
  a.variance_out = variance->typed_data();
  OverNeuronsOf(pool, x, bounds, a, [&](auto width, int64_t first) {
    ValuesOfNeurons<kMode, true, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

}  // namespace

// The handlers, for each extrapolation: their arguments in order.
#define KERAS_BERNSTEIN_HANDLERS(mode, name)                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                          \
      name##Values, Values<mode>,                                                         \
      ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* bounds */)    \
          .Arg<F32>(/* coefficient columns */).Arg<F32>(/* slope_lower */)                \
          .Arg<F32>(/* bend */).Ret<F32>(/* values */));                                  \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                          \
      name##Gradient, Gradient<mode>,                                                     \
      ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* upstream */)  \
          .Arg<F32>(/* bounds */).Arg<F32>(/* slope columns */)                           \
          .Ret<F32>(/* input gradient */).Ret<F32>(/* sums */));                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                          \
      name##BatchNormalizedValues, BatchNormalizedValues<mode>,                           \
      ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* scale */)     \
          .Arg<F32>(/* offset */).Arg<F32>(/* bounds */).Arg<F32>(/* columns */)          \
          .Arg<F32>(/* slope_lower */).Arg<F32>(/* bend */).Attr<float>("epsilon")        \
          .Ret<F32>(/* values */).Ret<F32>(/* mean */).Ret<F32>(/* variance */));         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                          \
      name##BatchNormalizedGradient, BatchNormalizedGradient<mode>,                       \
      ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* upstream */)  \
          .Arg<F32>(/* mean */).Arg<F32>(/* variance */).Arg<F32>(/* scale */)            \
          .Arg<F32>(/* offset */).Arg<F32>(/* bounds */).Arg<F32>(/* slope columns */)    \
          .Attr<float>("epsilon").Ret<F32>(/* input gradient */).Ret<F32>(/* sums */));

KERAS_BERNSTEIN_HANDLERS(kPolynomial, Polynomial)
KERAS_BERNSTEIN_HANDLERS(kClip, Clip)
KERAS_BERNSTEIN_HANDLERS(kLinear, Linear)
