// Op registrations and shape functions of the ssr_tf fused ops.
//
// ICS (Algorithm 1 of the SSR paper), per row b and view v over the last axis:
//   x0 = relu(z);  x_{t+1} = relu(x_t - alpha[v,t] * mean(x_t));  y = gamma[v] * x_T.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace ssr_tf {

using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

namespace {

// Checks alpha [V, T] and gamma [V, D] against views `v` and dim `d`.
Status CheckAlphaGamma(InferenceContext* c, int alpha_idx, DimensionHandle v, DimensionHandle d) {
  ShapeHandle alpha, gamma;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(alpha_idx), 2, &alpha));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(alpha_idx + 1), 2, &gamma));
  DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(alpha, 0), v, &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(gamma, 0), v, &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(gamma, 1), d, &unused));
  return ::tensorflow::OkStatus();
}

// [B, V, T]: the per-row-view means, the compact state the gradient uses.
ShapeHandle MuShape(InferenceContext* c, DimensionHandle b, DimensionHandle v, int alpha_idx) {
  return c->MakeShape({b, v, c->Dim(c->input(alpha_idx), 1)});
}

Status IcsShape(InferenceContext* c) {
  ShapeHandle z;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &z));
  TF_RETURN_IF_ERROR(CheckAlphaGamma(c, 1, c->Dim(z, 1), c->Dim(z, 2)));
  c->set_output(0, z);
  c->set_output(1, MuShape(c, c->Dim(z, 0), c->Dim(z, 1), 1));
  return ::tensorflow::OkStatus();
}

Status IcsGradShape(InferenceContext* c) {
  ShapeHandle z, mu, dy;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &z));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 3, &mu));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 3, &dy));
  TF_RETURN_IF_ERROR(c->Merge(z, dy, &z));
  TF_RETURN_IF_ERROR(CheckAlphaGamma(c, 1, c->Dim(z, 1), c->Dim(z, 2)));
  c->set_output(0, z);
  c->set_output(1, c->input(1));
  c->set_output(2, c->input(2));
  return ::tensorflow::OkStatus();
}

Status DynamicViewShape(InferenceContext* c) {
  ShapeHandle x, w;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &w));
  DimensionHandle d_in;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 1), c->Dim(w, 0), &d_in));
  TF_RETURN_IF_ERROR(CheckAlphaGamma(c, 2, c->Dim(w, 1), c->Dim(w, 2)));
  ShapeHandle out = c->MakeShape({c->Dim(x, 0), c->Dim(w, 1), c->Dim(w, 2)});
  c->set_output(0, out);
  c->set_output(1, out);
  c->set_output(2, MuShape(c, c->Dim(x, 0), c->Dim(w, 1), 2));
  return ::tensorflow::OkStatus();
}

Status BlockFusionShape(InferenceContext* c) {
  ShapeHandle h, k, b;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &h));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &k));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &b));
  DimensionHandle v, e, o;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(h, 1), c->Dim(k, 0), &v));
  TF_RETURN_IF_ERROR(c->Merge(v, c->Dim(b, 0), &v));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(h, 2), c->Dim(k, 1), &e));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(k, 2), c->Dim(b, 1), &o));
  c->set_output(0, c->MakeShape({c->Dim(h, 0), v, o}));
  return ::tensorflow::OkStatus();
}

Status BlockFusionGradShape(InferenceContext* c) {
  ShapeHandle h, k, dout;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &h));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &k));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &dout));
  DimensionHandle v, e, o, b;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(h, 1), c->Dim(k, 0), &v));
  TF_RETURN_IF_ERROR(c->Merge(v, c->Dim(dout, 1), &v));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(h, 2), c->Dim(k, 1), &e));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(k, 2), c->Dim(dout, 2), &o));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(h, 0), c->Dim(dout, 0), &b));
  c->set_output(0, c->MakeShape({b, v, e}));
  c->set_output(1, c->MakeShape({v, e, o}));
  c->set_output(2, c->MakeShape({v, o}));
  return ::tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("SsrIcs")
    .Input("z: float")
    .Input("alpha: float")
    .Input("gamma: float")
    .Output("y: float")
    .Output("mu: float")
    .SetShapeFn(IcsShape)
    .Doc(R"doc(
Iterative Competitive Sparse over the last axis of z [B, V, D]:
x0 = relu(z); x_{t+1} = relu(x_t - alpha[v, t] * mean_d(x_t)); y = gamma[v] * x_T.
alpha: [V, T] extinction rates. gamma: [V, D] recovery scales.
mu: [B, V, T] the means mean_d(x_t), the state SsrIcsGrad uses (not differentiated).
)doc");

REGISTER_OP("SsrIcsGrad")
    .Input("z: float")
    .Input("alpha: float")
    .Input("gamma: float")
    .Input("mu: float")
    .Input("dy: float")
    .Output("dz: float")
    .Output("dalpha: float")
    .Output("dgamma: float")
    .SetShapeFn(IcsGradShape)
    .Doc("Gradient of SsrIcs from z and the saved means mu (no state recomputation when alpha >= 0).");

REGISTER_OP("SsrDynamicView")
    .Input("x: float")
    .Input("proj_kernel: float")
    .Input("alpha: float")
    .Input("gamma: float")
    .Output("y: float")
    .Output("z: float")
    .Output("mu: float")
    .SetShapeFn(DynamicViewShape)
    .Doc(R"doc(
Grouped projection with ICS epilogue: z = reshape(x @ reshape(W, [d_in, V*E]), [B, V, E]),
y = ICS(z, alpha, gamma). z and the ICS means mu [B, V, T] are the state the gradient needs.
)doc");

REGISTER_OP("SsrBlockFusion")
    .Input("h: float")
    .Input("kernel: float")
    .Input("bias: float")
    .Output("out: float")
    .SetShapeFn(BlockFusionShape)
    .Doc("Per-view projection out[b, v] = h[b, v] @ kernel[v] + bias[v]; h [B,V,E], kernel [V,E,O].");

REGISTER_OP("SsrBlockFusionGrad")
    .Input("h: float")
    .Input("kernel: float")
    .Input("dout: float")
    .Output("dh: float")
    .Output("dkernel: float")
    .Output("dbias: float")
    .SetShapeFn(BlockFusionGradShape)
    .Doc("Gradient of SsrBlockFusion: dh = dout @ kernel^T, dkernel = h^T @ dout, dbias = sum_b dout.");

}  // namespace ssr_tf
