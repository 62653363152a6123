// The Bernstein kernels of `bernstein_cpu.h` as XLA FFI handlers, for JAX
// (`cpu_kernels.py` compiles this file for JAX, once per degree): `Values`,
// `Gradient`, `BatchNormalizedValues` and `BatchNormalizedGradient`, each
// taking the extrapolation mode as the integer attribute `mode` (`Mode`).
#include "bernstein_cpu.h"

#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;

namespace {

using namespace keras_bernstein;

using Dimensions = ffi::Span<const int64_t>;

std::string Text(Dimensions dimensions) {
  std::string text = "(";
  for (size_t i = 0; i < dimensions.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(dimensions[i]);
  }
  return text + (dimensions.size() == 1 ? ",)" : ")");
}

// The kernels read every buffer by the units of the bounds table, so a
// handler checks each buffer's exact shape first: XLA passes whatever the
// caller traced, and a wrong table would be read past its end. Each check
// is "" where the shape is right, else what is wrong.
struct Shapes {
  // Units from a (units, 2) bounds table; -1 where it is not one.
  explicit Shapes(const F32& bounds) {
    const Dimensions d = bounds.dimensions();
    units = d.size() == 2 && d[1] == 2 ? d[0] : -1;
    if (units < 0) first = "bounds must be (units, 2). Received: bounds.shape=" + Text(d);
  }

  // `name` of exactly `expected`.
  void Is(const char* name, Dimensions dimensions, std::initializer_list<int64_t> expected) {
    const std::vector<int64_t> want(expected);
    if (dimensions.size() == want.size() &&
        std::equal(dimensions.begin(), dimensions.end(), want.begin())) {
      return;
    }
    Fail(std::string(name) + " must be " + Text(Dimensions(want.data(), want.size())) +
         ". Received: " + name + ".shape=" + Text(dimensions));
  }

  // `x` whole rows of units, with `last_axis_is_units` its last axis units;
  // sets `rows`.
  void Rows(Dimensions x, bool last_axis_is_units) {
    int64_t elements = 1;
    for (int64_t size : x) elements *= size;
    const bool whole = units == 0 ? elements == 0 : units > 0 && elements % units == 0;
    const bool last = !last_axis_is_units || (x.size() >= 1 && x.back() == units);
    if (!whole || !last) {
      return Fail(std::string("x must be ") + (last_axis_is_units ? "(..., " : "rows of ") +
                  std::to_string(units) + (last_axis_is_units ? ")" : " values") +
                  ". Received: x.shape=" + Text(x));
    }
    rows = units ? elements / units : 0;
  }

  // `name` of the shape of `x`.
  void SameAs(const char* name, Dimensions dimensions, Dimensions x) {
    if (dimensions.size() == x.size() && std::equal(x.begin(), x.end(), dimensions.begin())) {
      return;
    }
    Fail(std::string(name) + " must have the shape of x, " + Text(x) + ". Received: " + name +
         ".shape=" + Text(dimensions));
  }

  void Fail(const std::string& problem) {
    if (first.empty()) first = problem;
  }

  // `mode` one of `Mode`'s.
  void KnownMode(int32_t mode) {
    if (!WithMode(mode, [](auto) {})) Fail("unknown extrapolation mode " + std::to_string(mode));
  }

  // The handler's error, or success; sets `a`'s rows and units.
  ffi::Error Into(Arguments& a) const {
    if (!first.empty()) return ffi::Error::InvalidArgument("keras_bernstein kernel: " + first);
    a.rows = rows;
    a.units = units;
    return ffi::Error::Success();
  }

  int64_t units = -1, rows = 0;
  std::string first;
};

// `for_neurons<mode>(width, first)` over every neuron of `a`, on the pool's
// threads.
template <typename ForNeurons>
void Run(ffi::ThreadPool& pool, const Arguments& a, int32_t mode, ForNeurons for_neurons) {
  WithMode(mode, [&](auto known) {
    OverNeurons(pool, a.rows, a.units, [&](auto width, int64_t first) {
      for_neurons(known, width, first);
    });
  });
}

ffi::Error GradientKernel(ffi::ThreadPool pool, F32 x, F32 upstream, F32 bounds, F32 slope_table,
                    int32_t mode, ffi::ResultBuffer<ffi::F32> grad_x,
                    ffi::ResultBuffer<ffi::F32> sums) {
  Arguments a;
  a.x = x.typed_data();
  a.upstream = upstream.typed_data();
  a.bounds = bounds.typed_data();
  a.table = slope_table.typed_data();
  a.out = grad_x->typed_data();
  a.sums = sums->typed_data();
  Shapes shapes(bounds);
  shapes.KnownMode(mode);
  shapes.Rows(x.dimensions(), false);
  shapes.SameAs("upstream", upstream.dimensions(), x.dimensions());
  shapes.Is("slope_table", slope_table.dimensions(), {kDegree, shapes.units});
  shapes.SameAs("input_gradient", grad_x->dimensions(), x.dimensions());
  shapes.Is("sums", sums->dimensions(), {SumCount(mode, false), shapes.units});
  if (ffi::Error error = shapes.Into(a); error.failure()) return error;
  Run(pool, a, mode, [&](auto known, auto width, int64_t first) {
    GradientOfNeurons<decltype(known)::value, false, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

ffi::Error ValuesKernel(ffi::ThreadPool pool, F32 x, F32 bounds, F32 columns, F32 slope_lower,
                  F32 bend, int32_t mode, ffi::ResultBuffer<ffi::F32> values) {
  Arguments a;
  a.x = x.typed_data();
  a.bounds = bounds.typed_data();
  a.table = columns.typed_data();
  a.slope_lower = slope_lower.typed_data();
  a.bend = bend.typed_data();
  a.out = values->typed_data();
  Shapes shapes(bounds);
  shapes.KnownMode(mode);
  shapes.Rows(x.dimensions(), false);
  shapes.Is("columns", columns.dimensions(), {kDegree + 1, shapes.units});
  shapes.Is("slope_lower", slope_lower.dimensions(), {shapes.units});
  shapes.Is("bend", bend.dimensions(), {shapes.units});
  shapes.SameAs("values", values->dimensions(), x.dimensions());
  if (ffi::Error error = shapes.Into(a); error.failure()) return error;
  Run(pool, a, mode, [&](auto known, auto width, int64_t first) {
    ValuesOfNeurons<decltype(known)::value, false, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

ffi::Error BatchNormalizedGradientKernel(ffi::ThreadPool pool, F32 x, F32 upstream, F32 mean,
                                   F32 variance, F32 scale, F32 offset, F32 bounds,
                                   F32 slope_table, float epsilon, int32_t mode,
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
  Shapes shapes(bounds);
  shapes.KnownMode(mode);
  shapes.Rows(x.dimensions(), true);
  shapes.SameAs("upstream", upstream.dimensions(), x.dimensions());
  shapes.Is("mean", mean.dimensions(), {shapes.units});
  shapes.Is("variance", variance.dimensions(), {shapes.units});
  shapes.Is("scale", scale.dimensions(), {shapes.units});
  shapes.Is("offset", offset.dimensions(), {shapes.units});
  shapes.Is("slope_table", slope_table.dimensions(), {kDegree, shapes.units});
  shapes.SameAs("input_gradient", grad_x->dimensions(), x.dimensions());
  shapes.Is("sums", sums->dimensions(), {SumCount(mode, true), shapes.units});
  if (ffi::Error error = shapes.Into(a); error.failure()) return error;
  Run(pool, a, mode, [&](auto known, auto width, int64_t first) {
    GradientOfNeurons<decltype(known)::value, true, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

ffi::Error BatchNormalizedValuesKernel(ffi::ThreadPool pool, F32 x, F32 scale, F32 offset,
                                 F32 bounds, F32 columns, F32 slope_lower, F32 bend,
                                 float epsilon, int32_t mode, ffi::ResultBuffer<ffi::F32> values,
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
  Shapes shapes(bounds);
  shapes.KnownMode(mode);
  shapes.Rows(x.dimensions(), true);
  shapes.Is("scale", scale.dimensions(), {shapes.units});
  shapes.Is("offset", offset.dimensions(), {shapes.units});
  shapes.Is("columns", columns.dimensions(), {kDegree + 1, shapes.units});
  shapes.Is("slope_lower", slope_lower.dimensions(), {shapes.units});
  shapes.Is("bend", bend.dimensions(), {shapes.units});
  shapes.SameAs("values", values->dimensions(), x.dimensions());
  shapes.Is("mean", mean->dimensions(), {shapes.units});
  shapes.Is("variance", variance->dimensions(), {shapes.units});
  if (ffi::Error error = shapes.Into(a); error.failure()) return error;
  Run(pool, a, mode, [&](auto known, auto width, int64_t first) {
    ValuesOfNeurons<decltype(known)::value, true, decltype(width)>(a, first);
  });
  return ffi::Error::Success();
}

}  // namespace

// The handlers: their arguments in order.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    Values, ValuesKernel,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* bounds */)
        .Arg<F32>(/* coefficient columns */).Arg<F32>(/* slope_lower */)
        .Arg<F32>(/* bend */).Attr<int32_t>("mode").Ret<F32>(/* values */));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    Gradient, GradientKernel,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* upstream */)
        .Arg<F32>(/* bounds */).Arg<F32>(/* slope columns */).Attr<int32_t>("mode")
        .Ret<F32>(/* input gradient */).Ret<F32>(/* sums */));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BatchNormalizedValues, BatchNormalizedValuesKernel,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* scale */)
        .Arg<F32>(/* offset */).Arg<F32>(/* bounds */).Arg<F32>(/* columns */)
        .Arg<F32>(/* slope_lower */).Arg<F32>(/* bend */).Attr<float>("epsilon")
        .Attr<int32_t>("mode").Ret<F32>(/* values */).Ret<F32>(/* mean */)
        .Ret<F32>(/* variance */));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BatchNormalizedGradient, BatchNormalizedGradientKernel,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>(/* x */).Arg<F32>(/* upstream */)
        .Arg<F32>(/* mean */).Arg<F32>(/* variance */).Arg<F32>(/* scale */)
        .Arg<F32>(/* offset */).Arg<F32>(/* bounds */).Arg<F32>(/* slope columns */)
        .Attr<float>("epsilon").Attr<int32_t>("mode").Ret<F32>(/* input gradient */)
        .Ret<F32>(/* sums */));
