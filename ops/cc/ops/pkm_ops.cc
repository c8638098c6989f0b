// Op definitions of the fused Product-Key Memory sparse gather (see
// ops/cc/kernels/pkm_gather_kernels.h for the math).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace ssr_tf {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// The [slots, dim] value table of the tensor forms: input 0.
Status TensorValuesShape(InferenceContext* c, ShapeHandle* values) {
  return c->WithRank(c->input(0), 2, values);
}

// The [slots, dim] shape of the variable behind input 0 of the resource forms, or an unknown
// matrix.
Status ResourceValuesShape(InferenceContext* c, ShapeHandle* values) {
  auto* handle_data = c->input_handle_shapes_and_types(0);
  if (handle_data == nullptr || handle_data->empty()) {
    *values = c->Matrix(c->UnknownDim(), c->UnknownDim());
    return Status();
  }
  return c->WithRank((*handle_data)[0].shape, 2, values);
}

// Shape functions of the gather ops, with the value table's shape read by `ValuesShape`.
template <Status (*ValuesShape)(InferenceContext*, ShapeHandle*)>
Status GatherSumShape(InferenceContext* c) {
  ShapeHandle values, indices, weights;
  TF_RETURN_IF_ERROR(ValuesShape(c, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &weights));
  TF_RETURN_IF_ERROR(c->Merge(indices, weights, &indices));
  c->set_output(0, c->Matrix(c->Dim(indices, 0), c->Dim(values, 1)));
  return Status();
}

template <Status (*ValuesShape)(InferenceContext*, ShapeHandle*)>
Status GatherSumGradShape(InferenceContext* c) {
  ShapeHandle values, indices, weights, grad;
  TF_RETURN_IF_ERROR(ValuesShape(c, &values));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &indices));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &weights));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &grad));
  TF_RETURN_IF_ERROR(c->Merge(indices, weights, &indices));
  DimensionHandle rows, dim, nk;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(indices, 0), c->Dim(grad, 0), &rows));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(values, 1), c->Dim(grad, 1), &dim));
  TF_RETURN_IF_ERROR(c->Multiply(rows, c->Dim(indices, 1), &nk));
  c->set_output(0, c->Matrix(rows, c->Dim(indices, 1)));
  c->set_output(1, c->Matrix(nk, dim));
  return Status();
}

}  // namespace

REGISTER_OP("PkmSparseGatherSum")
    .Input("values: T")
    .Input("indices: Tindices")
    .Input("weights: T")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn(GatherSumShape<TensorValuesShape>)
    .Doc(R"doc(
out[r, :] = sum_t weights[r, t] * values[indices[r, t], :].

values: [slots, dim] value table.
indices: [rows, k] slot ids in [0, slots).
weights: [rows, k] mixing weights.
output: [rows, dim].
)doc");

REGISTER_OP("PkmSparseGatherSumGrad")
    .Input("values: T")
    .Input("indices: Tindices")
    .Input("weights: T")
    .Input("grad: T")
    .Output("grad_weights: T")
    .Output("grad_rows: T")
    .Attr("T: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn(GatherSumGradShape<TensorValuesShape>)
    .Doc(R"doc(
Gradient of PkmSparseGatherSum: grad_weights[r, t] = <grad[r, :], values[indices[r, t], :]>,
grad_rows[r * k + t, :] = weights[r, t] * grad[r, :] (the IndexedSlices values for `values`,
with indices = reshape(indices, [-1])).
)doc");

// Resource-variable forms: read the value table in place under the variable's shared lock.
// A dense read (ReadVariableOp) of a table that sparse updates have touched copies the whole
// table every step (copy-on-read mode); these ops never do.

REGISTER_OP("PkmResourceSparseGatherSum")
    .Input("resource: resource")
    .Input("indices: Tindices")
    .Input("weights: dtype")
    .Output("output: dtype")
    .Attr("dtype: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn(GatherSumShape<ResourceValuesShape>)
    .Doc(R"doc(
PkmSparseGatherSum with the value table read from a resource variable in place.
)doc");

REGISTER_OP("PkmResourceSparseGatherSumGrad")
    .Input("resource: resource")
    .Input("indices: Tindices")
    .Input("weights: dtype")
    .Input("grad: dtype")
    .Output("grad_weights: dtype")
    .Output("grad_rows: dtype")
    .Attr("dtype: {float, double}")
    .Attr("Tindices: {int32, int64}")
    .SetShapeFn(GatherSumGradShape<ResourceValuesShape>)
    .Doc(R"doc(
PkmSparseGatherSumGrad with the value table read from a resource variable in place.
)doc");

REGISTER_OP("PkmSubKeyTopK")
    .Input("queries: T")
    .Input("keys: T")
    .Output("values: T")
    .Output("indices: int32")
    .Attr("k: int >= 1")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle queries, keys;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &queries));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &keys));
      DimensionHandle groups, dim;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(queries, 1), c->Dim(keys, 0), &groups));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(queries, 2), c->Dim(keys, 2), &dim));
      int64_t k = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      ShapeHandle out = c->MakeShape({c->Dim(queries, 0), groups, c->MakeDim(k)});
      c->set_output(0, out);
      c->set_output(1, out);
      return Status();
    })
    .Doc(R"doc(
First PKM stage, scoring fused with top-k: for row r and sub-key table g,
(values, indices)[r, g] = top_k_i <queries[r, g, :], keys[g, i, :]>, sorted descending.

queries: [rows, groups, dim] half-queries (groups = heads * 2).
keys: [groups, n, dim] sub-key tables, k <= n.
values: [rows, groups, k] scores.
indices: [rows, groups, k] sub-key ids in [0, n).
)doc");

}  // namespace ssr_tf
