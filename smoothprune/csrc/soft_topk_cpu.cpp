// CPU kernels of the sparse smooth top-k forward and its closed-form backward.
//
// The ops work on the last dimension of a contiguous tensor viewed as [rows, n]; the Python
// wrapper moves the user's `dim` there. Rows run in parallel. Every row is computed in float64
// whatever the input dtype, and written back in the input dtype.
//
// Saved for the backward (integers, never re-detected by comparing floats):
//   perm   [rows, n]  int32  original position of each sorted position;
//   blocks [rows, 2]  int64  the pooled block [a, b) in sorted positions (a == b: none;
//                            a == b == -1: the row held a NaN/Inf and its outputs are NaN);
//   gamma  [rows]     f64    the pooled block's value.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "pav.h"
#include "radix_sort.h"

namespace smoothprune {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Slope c = (q-1)|z|^(q-2) of psi~ at z (DESIGN section 2, Jacobian). For p > 2 (q < 2) the
// slope is infinite at z = 0; |z| is floored at 1e-12 lam, far below any float32 resolution of y.
inline double psi_slope(double z, const TopkParams& P) {
  switch (P.kind) {
    case PKind::kTwo:
      return 1.0;
    case PKind::kFourThirds:
      return 3.0 * z * z;
    default: {
      double az = std::abs(z);
      if (P.q < 2.0) az = std::max(az, 1e-12 * P.lam);
      return (P.q - 1.0) * std::pow(az, P.q - 2.0);
    }
  }
}

template <typename scalar_t>
using KeyFloat = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

template <typename scalar_t>
using KeyInt = std::conditional_t<std::is_same<scalar_t, double>::value, uint64_t, uint32_t>;

template <typename scalar_t>
bool row_is_finite(const scalar_t* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(static_cast<double>(x[i]))) return false;
  }
  return true;
}

template <typename scalar_t>
void forward_rows(const scalar_t* x_all, scalar_t* y_all, int32_t* perm_all, int64_t* blocks_all,
                  double* gamma_all, int64_t rows, int64_t n, int64_t k, const TopkParams& P) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    SortWorkspace<KeyInt<scalar_t>> ws;
    ws.resize(n);
    std::vector<double> s(n);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* x = x_all + r * n;
      scalar_t* y = y_all + r * n;
      int32_t* perm = perm_all + r * n;
      int64_t* blocks = blocks_all + 2 * r;
      if (!row_is_finite(x, n)) {
        for (int64_t i = 0; i < n; ++i) {
          y[i] = static_cast<scalar_t>(kNaN);
          perm[i] = static_cast<int32_t>(i);
        }
        blocks[0] = blocks[1] = -1;
        gamma_all[r] = kNaN;
        continue;
      }
      for (int64_t i = 0; i < n; ++i) {
        const KeyFloat<scalar_t> v = static_cast<KeyFloat<scalar_t>>(x[i]);
        // `+ 0` turns -0.0 into +0.0 so that both zeros share one key.
        ws.keys[i] = descending_key(P.magnitude ? std::abs(v) : v + KeyFloat<scalar_t>(0));
      }
      sort_keys_with_index(ws, n);
      for (int64_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(x[ws.idx[i]]);
        s[i] = P.magnitude ? std::abs(v) : v;
        perm[i] = ws.idx[i];
      }
      const BoundaryBlock blk = solve_sorted_row(s.data(), n, k, P);
      blocks[0] = blk.a;
      blocks[1] = blk.b;
      gamma_all[r] = blk.a < blk.b ? blk.gamma : 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const int32_t j = ws.idx[i];
        double out;
        if (i < blk.a) {  // kept singleton
          if (!P.magnitude) {
            out = 1.0;
          } else if (P.debias) {
            y[j] = x[j];  // the de-biased kept value is x itself, exactly
            continue;
          } else {
            out = kept_value(s[i], P, nullptr);
          }
        } else if (i < blk.b) {  // pooled boundary block
          const double z = s[i] - blk.gamma;
          out = psi(z, P) + ((P.magnitude && P.debias) ? z : 0.0);
        } else {  // pruned singleton
          out = 0.0;
        }
        if (P.magnitude && out != 0.0 && static_cast<double>(x[j]) < 0) out = -out;
        y[j] = static_cast<scalar_t>(out);
      }
    }
  });
}

template <typename scalar_t>
void backward_rows(const scalar_t* g_all, const scalar_t* x_all, const int32_t* perm_all,
                   const int64_t* blocks_all, const double* gamma_all, scalar_t* gx_all,
                   int64_t rows, int64_t n, int64_t k, const TopkParams& P) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  const double beta = (P.magnitude && P.debias) ? 1.0 : 0.0;
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = g_all + r * n;
      const scalar_t* x = x_all + r * n;
      const int32_t* perm = perm_all + r * n;
      scalar_t* gx = gx_all + r * n;
      const int64_t a = blocks_all[2 * r], b = blocks_all[2 * r + 1];
      const double gamma = gamma_all[r];
      if (a < 0) {  // the forward saw a NaN/Inf in this row
        for (int64_t i = 0; i < n; ++i) gx[i] = static_cast<scalar_t>(kNaN);
        continue;
      }
      for (int64_t i = 0; i < n; ++i) gx[i] = scalar_t(0);
      auto sorted_value = [&](int64_t i) {
        const double v = static_cast<double>(x[perm[i]]);
        return P.magnitude ? std::abs(v) : v;
      };
      auto sign_of = [&](int32_t j) {  // sign(x) with sign(0) = +1: y is odd in x
        return (P.magnitude && static_cast<double>(x[j]) < 0) ? -1.0 : 1.0;
      };
      // Kept singletons: the mask is locally constant (zero gradient); the magnitude has
      // dy/dx = c / (c + lam^(q-1)) raw, and exactly 1 de-biased (y = x there).
      if (P.magnitude) {
        for (int64_t i = 0; i < a; ++i) {
          const int32_t j = perm[i];
          double sens = 1.0;
          if (!P.debias) {
            double z = 0.0;
            kept_value(sorted_value(i), P, &z);
            const double c = psi_slope(z, P);
            sens = c / (c + P.lam_q1);
          }
          gx[j] = static_cast<scalar_t>(static_cast<double>(g[j]) * sens);
        }
      }
      if (a >= b) continue;
      // Pooled block: grad_s_j = (c_j / lam_q1) (g_j - Gc / D) + beta (g_j - c_j G / D),
      // D = sum (c_i + d_i), Gc = sum g_i c_i, G = sum g_i, d_i = lam_q1 w_i (magnitude only).
      double D = 0.0, Gc = 0.0, G = 0.0;
      for (int64_t i = a; i < b; ++i) {
        const int32_t j = perm[i];
        const double gt = static_cast<double>(g[j]) * sign_of(j);
        const double c = psi_slope(sorted_value(i) - gamma, P);
        D += c + ((P.magnitude && i < k) ? P.lam_q1 : 0.0);
        Gc += gt * c;
        G += gt;
      }
      if (!(D > 0)) continue;  // unreachable for a block holding kept elements; stay finite
      for (int64_t i = a; i < b; ++i) {
        const int32_t j = perm[i];
        const double sg = sign_of(j);
        const double gt = static_cast<double>(g[j]) * sg;
        const double c = psi_slope(sorted_value(i) - gamma, P);
        const double grad_s = (c / P.lam_q1) * (gt - Gc / D) + beta * (gt - c * G / D);
        gx[j] = static_cast<scalar_t>(sg * grad_s);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_topk_forward_cpu(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, double p, bool magnitude,
    bool debias) {
  const auto args = check_soft_topk_args("soft_topk_forward", x, k, lam, p);
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.dim() == 0 ? 1 : xc.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  at::Tensor y = at::empty_like(xc);
  at::Tensor perm = at::empty(xc.sizes(), xc.options().dtype(at::kInt));
  auto batch_shape = xc.sizes().vec();
  if (!batch_shape.empty()) batch_shape.pop_back();
  at::Tensor gamma = at::empty(batch_shape, xc.options().dtype(at::kDouble));
  batch_shape.push_back(2);
  at::Tensor blocks = at::empty(batch_shape, xc.options().dtype(at::kLong));
  const TopkParams P = TopkParams::make(args.lam, p, magnitude, debias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_topk_forward", [&] {
    forward_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                           perm.mutable_data_ptr<int32_t>(), blocks.mutable_data_ptr<int64_t>(),
                           gamma.mutable_data_ptr<double>(), rows, n, args.k, P);
  });
  return {y, perm, blocks, gamma};
}

at::Tensor soft_topk_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                  const at::Tensor& perm, const at::Tensor& blocks,
                                  const at::Tensor& gamma, const at::Tensor& k,
                                  const at::Tensor& lam, double p, bool magnitude, bool debias) {
  const auto args = check_soft_topk_args("soft_topk_backward", x, k, lam, p);
  check_saved_state("soft_topk_backward", grad, x, perm, blocks, gamma);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(xc.scalar_type()).contiguous();
  const at::Tensor permc = perm.contiguous();
  const at::Tensor blocksc = blocks.contiguous();
  const at::Tensor gammac = gamma.contiguous();
  const int64_t n = xc.dim() == 0 ? 1 : xc.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  at::Tensor gx = at::empty_like(xc);
  const TopkParams P = TopkParams::make(args.lam, p, magnitude, debias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_topk_backward", [&] {
    backward_rows<scalar_t>(gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                            permc.const_data_ptr<int32_t>(), blocksc.const_data_ptr<int64_t>(),
                            gammac.const_data_ptr<double>(), gx.mutable_data_ptr<scalar_t>(),
                            rows, n, args.k, P);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(smoothprune, CPU, m) {
  m.impl("soft_topk_forward", &soft_topk_forward_cpu);
  m.impl("soft_topk_backward", &soft_topk_backward_cpu);
}

}  // namespace smoothprune
