// Argument checks shared by the kernels. Every message names the op, the argument, what was
// expected and what was received; value errors surface in Python as ValueError.
#pragma once

#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace smoothprune {

// The value of a one-element tensor: read in place when it is on the CPU (the wrappers pass k
// and lam there), through `item()` (a dispatcher call, and a sync for a GPU tensor) otherwise.
template <typename T>
T read_scalar(const at::Tensor& t) {
  if (t.device().is_cpu()) {
    switch (t.scalar_type()) {
      case at::kLong: return static_cast<T>(*t.const_data_ptr<int64_t>());
      case at::kInt: return static_cast<T>(*t.const_data_ptr<int32_t>());
      case at::kDouble: return static_cast<T>(*t.const_data_ptr<double>());
      case at::kFloat: return static_cast<T>(*t.const_data_ptr<float>());
      default: break;
    }
  }
  return t.item<T>();
}

struct SoftTopkArgs {
  int64_t k;
  double lam;
};

// Everything about the arguments that can be checked without reading k and lam: shapes, dtypes
// and p. Kernels that read k and lam on the device (CUDA) stop here.
inline void check_soft_topk_kinds(const char* op, const at::Tensor& x, const at::Tensor& k,
                                  const at::Tensor& lam, double p) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": expected x with at least 1 dimension, got a 0-d tensor");
  const auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
                    op, ": expected x of dtype float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK_VALUE(x.size(-1) < std::numeric_limits<int32_t>::max(), op,
                    ": expected fewer than 2^31 - 1 elements along the reduced dimension, got ",
                    x.size(-1));
  TORCH_CHECK_VALUE(k.numel() == 1 && !at::isFloatingType(k.scalar_type()) &&
                        !at::isComplexType(k.scalar_type()) && k.scalar_type() != at::kBool,
                    op, ": expected k to be an integer scalar tensor, got a ", k.scalar_type(),
                    " tensor of shape ", k.sizes());
  TORCH_CHECK_VALUE(lam.numel() == 1 && at::isFloatingType(lam.scalar_type()), op,
                    ": expected lam to be a floating scalar tensor, got a ", lam.scalar_type(),
                    " tensor of shape ", lam.sizes());
  TORCH_CHECK_VALUE(p > 1 && std::isfinite(p), op, ": expected p > 1 and finite, got p=", p);
}

inline int64_t check_k_value(const char* op, int64_t k, int64_t n) {
  TORCH_CHECK_VALUE(k >= 0 && k <= n, op, ": expected 0 <= k <= ", n,
                    " (the size of the reduced dimension), got k=", k);
  return k;
}

inline double check_lam_value(const char* op, double lam) {
  TORCH_CHECK_VALUE(lam > 0 && std::isfinite(lam), op, ": expected lam > 0 and finite, got lam=", lam);
  return lam;
}

inline SoftTopkArgs check_soft_topk_args(const char* op, const at::Tensor& x, const at::Tensor& k,
                                         const at::Tensor& lam, double p) {
  check_soft_topk_kinds(op, x, k, lam, p);
  return {check_k_value(op, read_scalar<int64_t>(k), x.size(-1)),
          check_lam_value(op, read_scalar<double>(lam))};
}

// Uninitialised outputs of soft_topk_forward for x (contiguous, >= 1 dim): y like x, and the
// saved state check_saved_state expects (perm int32 like x, blocks int64 [..., 2], gamma f64 [...]).
struct ForwardOutputs {
  at::Tensor y, perm, blocks, gamma;
};

inline ForwardOutputs empty_forward_outputs(const at::Tensor& x) {
  auto batch_shape = x.sizes().vec();
  batch_shape.pop_back();
  at::Tensor gamma = at::empty(batch_shape, x.options().dtype(at::kDouble));
  batch_shape.push_back(2);
  return {at::empty_like(x), at::empty(x.sizes(), x.options().dtype(at::kInt)),
          at::empty(batch_shape, x.options().dtype(at::kLong)), gamma};
}

inline void check_saved_state(const char* op, const at::Tensor& grad, const at::Tensor& x,
                              const at::Tensor& perm, const at::Tensor& blocks,
                              const at::Tensor& gamma) {
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes(), op, ": expected grad of shape ", x.sizes(), ", got ",
                    grad.sizes());
  TORCH_CHECK_VALUE(perm.sizes() == x.sizes() && perm.scalar_type() == at::kInt, op,
                    ": expected perm of shape ", x.sizes(), " and dtype int32, got ", perm.sizes(),
                    " ", perm.scalar_type());
  TORCH_CHECK_VALUE(blocks.scalar_type() == at::kLong && blocks.numel() == 2 * gamma.numel() &&
                        gamma.scalar_type() == at::kDouble && gamma.numel() * x.size(-1) == x.numel(),
                    op, ": expected blocks (int64, [..., 2]) and gamma (float64, [...]) saved by "
                    "soft_topk_forward for this x, got ", blocks.sizes(), " ", blocks.scalar_type(),
                    " and ", gamma.sizes(), " ", gamma.scalar_type());
}

}  // namespace smoothprune
