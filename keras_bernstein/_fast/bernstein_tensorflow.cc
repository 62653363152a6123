// The Bernstein kernels of `bernstein_cpu.h` as TensorFlow CPU ops
// (`cpu_kernels.py` compiles this file for TensorFlow, once per degree n, and
// loads it with `tf.load_op_library`). Op names end in the degree, so that
// the libraries of several degrees live in one process:
//
//   KerasBernsteinValues<n>(x, bounds, columns, slope_lower, bend) -> values
//   KerasBernsteinGradient<n>(x, upstream, bounds, slope_table)
//       -> (input gradient, sums)
//   KerasBernsteinBatchNormalizedValues<n>(x, scale, offset, bounds, columns,
//       slope_lower, bend) -> (values, mean, variance)
//   KerasBernsteinBatchNormalizedGradient<n>(x, upstream, mean, variance,
//       scale, offset, bounds, slope_table) -> (input gradient, sums)
//
// `x` and `upstream` are (..., units) with the neurons flat in the last
// axes, per-neuron vectors (units,), `bounds` (units, 2), tables degree axis
// first, (n + 1, units) or (n, units); `sums` is (count, units). Each op has
// the integer attribute `mode`, the extrapolation mode (`Mode`), and the
// batch-normalized ones `epsilon`.
#include "bernstein_cpu.h"

#include <functional>
#include <initializer_list>
#include <string>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

#define KERAS_BERNSTEIN_STRING(x) #x
#define KERAS_BERNSTEIN_NAME(kind, degree) "KerasBernstein" kind KERAS_BERNSTEIN_STRING(degree)

namespace {

using namespace keras_bernstein;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

// TensorFlow's intra-op thread pool as `OverNeurons` wants it.
struct IntraOpThreads {
  tensorflow::thread::ThreadPool* pool;
  int64_t num_threads() const { return pool->NumThreads(); }
  void Schedule(std::function<void()> task) { pool->Schedule(std::move(task)); }
};

// The shape functions: the first output has the shape of `x` (input 0); the
// statistics are (units,), the sums (count, units), units from `bounds`.
tensorflow::Status SameAsX(InferenceContext* c) {
  c->set_output(0, c->input(0));
  return tensorflow::Status();
}

tensorflow::Status WithStatistics(InferenceContext* c) {
  c->set_output(0, c->input(0));
  ShapeHandle units = c->Vector(c->Dim(c->input(3), 0));
  c->set_output(1, units);
  c->set_output(2, units);
  return tensorflow::Status();
}

template <bool kNormalized>
tensorflow::Status WithSums(InferenceContext* c) {
  int mode = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("mode", &mode));
  const int count = SumCount(mode, kNormalized);
  c->set_output(0, c->input(0));
  c->set_output(1, c->Matrix(count, c->Dim(c->input(kNormalized ? 6 : 2), 0)));
  return tensorflow::Status();
}

// An op's extrapolation mode and, where it has one, its epsilon.
class BernsteinOp : public OpKernel {
 public:
  explicit BernsteinOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("mode", &mode_));
    OP_REQUIRES(context, WithMode(mode_, [](auto) {}),
                absl::InvalidArgumentError("unknown extrapolation mode " + std::to_string(mode_)));
    if (context->HasAttr("epsilon")) {
      OP_REQUIRES_OK(context, context->GetAttr("epsilon", &epsilon_));
    }
  }

 protected:
  // `for_neurons<mode>(width, first)` over every neuron of a (rows, units)
  // input, on the intra-op threads; sets `a`'s rows and units.
  template <typename ForNeurons>
  void Run(OpKernelContext* context, const Tensor& x, const Tensor& bounds, Arguments& a,
           ForNeurons for_neurons) {
    a.units = bounds.dim_size(0);
    a.rows = a.units ? x.NumElements() / a.units : 0;
    a.epsilon = epsilon_;
    IntraOpThreads threads{context->device()->tensorflow_cpu_worker_threads()->workers};
    WithMode(mode_, [&](auto mode) {
      OverNeurons(threads, a.rows, a.units, [&](auto width, int64_t first) {
        for_neurons(mode, width, first);
      });
    });
  }

  // Whether the inputs have the sizes the kernels read (and fails the op
  // otherwise): `bounds_index` a (units, 2) table; `x` (input 0) a whole
  // number of rows of units, with `last_axis_is_units` its last axis units;
  // `same_as_x` inputs of `x`'s shape; `per_neuron` inputs of units values;
  // input `table_index` `table_rows` rows of units.
  bool ShapesAgree(OpKernelContext* context, int bounds_index, bool last_axis_is_units,
                   std::initializer_list<int> same_as_x, std::initializer_list<int> per_neuron,
                   int table_index, int64_t table_rows) {
    const Tensor& x = context->input(0);
    const Tensor& bounds = context->input(bounds_index);
    auto fail = [&](const std::string& what) {
      context->CtxFailure(__FILE__, __LINE__, absl::InvalidArgumentError(what));
      return false;
    };
    if (bounds.dims() != 2 || bounds.dim_size(1) != 2) {
      return fail("bounds must be (units, 2), got " + bounds.shape().DebugString());
    }
    const int64_t units = bounds.dim_size(0);
    if (units == 0 ? x.NumElements() != 0 : x.NumElements() % units != 0) {
      return fail("x " + x.shape().DebugString() + " is not rows of " + std::to_string(units));
    }
    if (last_axis_is_units && (x.dims() < 1 || x.dim_size(x.dims() - 1) != units)) {
      return fail("x " + x.shape().DebugString() + " must end in " + std::to_string(units));
    }
    for (int index : same_as_x) {
      if (context->input(index).shape() != x.shape()) {
        return fail("input " + std::to_string(index) + " must have the shape of x");
      }
    }
    for (int index : per_neuron) {
      if (context->input(index).NumElements() != units) {
        return fail("input " + std::to_string(index) + " must hold one value per unit");
      }
    }
    if (context->input(table_index).NumElements() != table_rows * units) {
      return fail("input " + std::to_string(table_index) + " must be " +
                  std::to_string(table_rows) + " rows of units");
    }
    return true;
  }

  // Output `index` of `shape`, its memory; null (and the op failed) where it
  // could not be allocated. With `reused` >= 0 it takes the memory of that
  // input where nothing else holds it (the kernels read each element before
  // they write it): a training step's input gradient then overwrites the
  // upstream gradient instead of adding a batch-sized tensor at the
  // backward pass's peak, as TensorFlow's own elementwise gradients do.
  float* Output(OpKernelContext* context, int index, const tensorflow::TensorShape& shape,
                int reused = -1) {
    Tensor* output = nullptr;
    const tensorflow::Status status =
        reused < 0 ? context->allocate_output(index, shape, &output)
                   : context->forward_input_or_allocate_output({reused}, index, shape, &output);
    if (!status.ok()) {
      context->CtxFailureWithWarning(__FILE__, __LINE__, status);
      return nullptr;
    }
    return output->flat<float>().data();
  }

  int mode_ = kLinear;
  float epsilon_ = 0.0f;
};

// The op's inputs, in order, into the fields of `a` that hold them.
void ReadInputs(OpKernelContext* context, std::initializer_list<const float* Arguments::*> fields,
                Arguments& a) {
  int index = 0;
  for (auto field : fields) a.*field = context->input(index++).flat<float>().data();
}

class ValuesOp : public BernsteinOp {
 public:
  using BernsteinOp::BernsteinOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    if (!ShapesAgree(context, 1, false, {}, {3, 4}, 2, kDegree + 1)) return;
    Arguments a;
    ReadInputs(context, {&Arguments::x, &Arguments::bounds, &Arguments::table,
                         &Arguments::slope_lower, &Arguments::bend}, a);
    if (!(a.out = Output(context, 0, x.shape(), 0))) return;
    Run(context, x, context->input(1), a, [&](auto mode, auto width, int64_t first) {
      ValuesOfNeurons<decltype(mode)::value, false, decltype(width)>(a, first);
    });
  }
};

class GradientOp : public BernsteinOp {
 public:
  using BernsteinOp::BernsteinOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& bounds = context->input(2);
    if (!ShapesAgree(context, 2, false, {1}, {}, 3, kDegree)) return;
    Arguments a;
    ReadInputs(context, {&Arguments::x, &Arguments::upstream, &Arguments::bounds,
                         &Arguments::table}, a);
    if (!(a.out = Output(context, 0, x.shape(), 1))) return;
    if (!(a.sums = Output(context, 1, {SumCount(mode_, false), bounds.dim_size(0)}))) return;
    Run(context, x, bounds, a, [&](auto mode, auto width, int64_t first) {
      GradientOfNeurons<decltype(mode)::value, false, decltype(width)>(a, first);
    });
  }
};

class BatchNormalizedValuesOp : public BernsteinOp {
 public:
  using BernsteinOp::BernsteinOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& bounds = context->input(3);
    if (!ShapesAgree(context, 3, true, {}, {1, 2, 5, 6}, 4, kDegree + 1)) return;
    Arguments a;
    ReadInputs(context, {&Arguments::x, &Arguments::scale, &Arguments::offset,
                         &Arguments::bounds, &Arguments::table, &Arguments::slope_lower,
                         &Arguments::bend}, a);
    if (!(a.out = Output(context, 0, x.shape(), 0))) return;
    if (!(a.mean_out = Output(context, 1, {bounds.dim_size(0)}))) return;
    if (!(a.variance_out = Output(context, 2, {bounds.dim_size(0)}))) return;
    Run(context, x, bounds, a, [&](auto mode, auto width, int64_t first) {
      ValuesOfNeurons<decltype(mode)::value, true, decltype(width)>(a, first);
    });
  }
};

class BatchNormalizedGradientOp : public BernsteinOp {
 public:
  using BernsteinOp::BernsteinOp;
  void Compute(OpKernelContext* context) override {
    const Tensor& x = context->input(0);
    const Tensor& bounds = context->input(6);
    if (!ShapesAgree(context, 6, true, {1}, {2, 3, 4, 5}, 7, kDegree)) return;
    Arguments a;
    ReadInputs(context, {&Arguments::x, &Arguments::upstream, &Arguments::mean_in,
                         &Arguments::variance_in, &Arguments::scale, &Arguments::offset,
                         &Arguments::bounds, &Arguments::table}, a);
    if (!(a.out = Output(context, 0, x.shape(), 1))) return;
    if (!(a.sums = Output(context, 1, {SumCount(mode_, true), bounds.dim_size(0)}))) return;
    Run(context, x, bounds, a, [&](auto mode, auto width, int64_t first) {
      GradientOfNeurons<decltype(mode)::value, true, decltype(width)>(a, first);
    });
  }
};

}  // namespace

#define KERAS_BERNSTEIN_MODE_ATTRIBUTE "mode: int"

REGISTER_OP(KERAS_BERNSTEIN_NAME("Values", DEGREE))
    .Input("x: float")
    .Input("bounds: float")
    .Input("columns: float")
    .Input("slope_lower: float")
    .Input("bend: float")
    .Attr(KERAS_BERNSTEIN_MODE_ATTRIBUTE)
    .Output("values: float")
    .SetShapeFn(SameAsX);

REGISTER_OP(KERAS_BERNSTEIN_NAME("Gradient", DEGREE))
    .Input("x: float")
    .Input("upstream: float")
    .Input("bounds: float")
    .Input("slope_table: float")
    .Attr(KERAS_BERNSTEIN_MODE_ATTRIBUTE)
    .Output("input_gradient: float")
    .Output("sums: float")
    .SetShapeFn(WithSums<false>);

REGISTER_OP(KERAS_BERNSTEIN_NAME("BatchNormalizedValues", DEGREE))
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Input("bounds: float")
    .Input("columns: float")
    .Input("slope_lower: float")
    .Input("bend: float")
    .Attr(KERAS_BERNSTEIN_MODE_ATTRIBUTE)
    .Attr("epsilon: float")
    .Output("values: float")
    .Output("mean: float")
    .Output("variance: float")
    .SetShapeFn(WithStatistics);

REGISTER_OP(KERAS_BERNSTEIN_NAME("BatchNormalizedGradient", DEGREE))
    .Input("x: float")
    .Input("upstream: float")
    .Input("mean: float")
    .Input("variance: float")
    .Input("scale: float")
    .Input("offset: float")
    .Input("bounds: float")
    .Input("slope_table: float")
    .Attr(KERAS_BERNSTEIN_MODE_ATTRIBUTE)
    .Attr("epsilon: float")
    .Output("input_gradient: float")
    .Output("sums: float")
    .SetShapeFn(WithSums<true>);

REGISTER_KERNEL_BUILDER(
    Name(KERAS_BERNSTEIN_NAME("Values", DEGREE)).Device(tensorflow::DEVICE_CPU), ValuesOp);
REGISTER_KERNEL_BUILDER(
    Name(KERAS_BERNSTEIN_NAME("Gradient", DEGREE)).Device(tensorflow::DEVICE_CPU), GradientOp);
REGISTER_KERNEL_BUILDER(
    Name(KERAS_BERNSTEIN_NAME("BatchNormalizedValues", DEGREE)).Device(tensorflow::DEVICE_CPU),
    BatchNormalizedValuesOp);
REGISTER_KERNEL_BUILDER(
    Name(KERAS_BERNSTEIN_NAME("BatchNormalizedGradient", DEGREE)).Device(tensorflow::DEVICE_CPU),
    BatchNormalizedGradientOp);
