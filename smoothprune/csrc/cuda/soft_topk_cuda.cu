// CUDA kernels of the sparse smooth top-k forward and its closed-form backward.
//
// Same contract as the CPU kernels (soft_topk_cpu.cpp): the ops work on the last dimension of a
// contiguous tensor viewed as [rows, n], compute in float64 and save
//   perm   [rows, n]  int32  the row's positions in descending key order;
//   blocks [rows, 2]  int64  the pooled block [a, b) in sorted positions (a == b: none;
//                            a == b == -1: the row held a NaN/Inf and its outputs are NaN);
//   gamma  [rows]     f64    the pooled block's offset rel in the row's frame (pav.h, Frame):
//                            the frame is rebuilt from the junction key (sorted position k - 1).
// The CPU kernel lays perm out as [kept | block | pruned] after a selection; a descending sort is
// one such layout, and it is all the backward reads.
//
// Forward, three steps on the current stream:
//   1. keys (x, or |x| for the magnitude) sorted per row: torch's sort for short rows (bitonic in
//      shared memory), a cub radix sort with int32 positions for long ones;
//   2. rows shorter than kLongRow: one thread per row solves the sorted row with the PAV of pav.h
//      (the same code as the CPU, in the same scale-free frame: the pooled block is grown outwards
//      from the k | k+1 junction, so its cost is the block's size); longer rows: one thread block
//      per row runs pav.h's root search for the pooled block with its sums over the thread
//      block's threads (solve_long_rows_kernel);
//   3. every element is settled in parallel: kept singleton, pooled block or pruned; for p > 2
//      the mask's smallest block member then takes the remainder of the block's share, as on the
//      CPU (mask_remainder_kernel).
// Backward (pav.h's closed-form backward, as on the CPU): one thread block per row reduces the
// pooled block's three sums, then every element's gradient is written in parallel.
// k and lam may be CPU tensors (read and checked on the host, as on the CPU) or 0-d tensors on
// x's GPU, which the kernels read themselves (ScalarArgs): then a call never synchronises with the
// device, and a CUDA graph replays with whatever values the tensors hold at replay time.
// Only c10's CUDA headers: ATen/cuda/CUDAContext.h would pull in cuSPARSE/cuBLAS headers, which
// a CUDA toolkit without those libraries (the CI machines') does not have.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda_runtime.h>
#include <torch/library.h>
#include <torch/types.h>

#include <climits>
#include <cstdint>
#include <tuple>

#include "../checks.h"
#include "../pav.h"

namespace smoothprune {
namespace {

constexpr int kThreads = 256;
// Rows at least this long are solved by a whole thread block each (solve_long_rows_kernel).
constexpr int64_t kLongRow = 2048;
// torch sorts rows up to this length by a bitonic sort in shared memory, faster than cub there.
constexpr int64_t kBitonicSortRow = 4096;

// k and lam as the kernels see them: host values, or pointers to 0-d tensors on the device.
struct ScalarArgs {
  int64_t k;
  double lam;
  const int64_t* k_ptr;   // nullptr: use k
  const double* lam_ptr;  // nullptr: use lam
  double p;
  bool magnitude;
  bool debias;
};

// k and the derived parameters, read on the device. False when k or lam is invalid for rows of
// length n (only possible for device values, host values were checked): a kernel cannot raise,
// so such a call gives NaN in every row, as a row holding a NaN does.
__device__ inline bool read_args(const ScalarArgs& A, int64_t n, int64_t* k, TopkParams* P) {
  const int64_t kv = A.k_ptr != nullptr ? *A.k_ptr : A.k;
  const double lv = A.lam_ptr != nullptr ? *A.lam_ptr : A.lam;
  *k = kv;
  *P = TopkParams::make(lv, A.p, A.magnitude, A.debias);
  return kv >= 0 && kv <= n && lv > 0 && lv - lv == 0.0;
}

// Thread blocks of a grid-stride launch over `total` elements.
inline int thread_blocks_for(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t cap = static_cast<int64_t>(sms) * 32;
  return static_cast<int>(std::max<int64_t>(1, std::min(wanted, cap)));
}

// Whether the sorted row s (descending, NaN first) has no solution: k or lam invalid (!valid),
// or the row not finite, which it is iff both ends are.
template <typename key_t>
__device__ inline bool row_is_unsolvable(bool valid, const key_t* s, int64_t n) {
  const double first = s[0], last = s[n - 1];
  return !valid || !(first - first == 0.0) || !(last - last == 0.0);
}

// Step 2: one thread per row. `sorted` holds the keys in descending order.
template <typename key_t>
__global__ void solve_rows_kernel(const key_t* __restrict__ sorted, int64_t rows, int64_t n,
                                  ScalarArgs A, int64_t* __restrict__ blocks, double* __restrict__ gamma) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  int64_t k;
  TopkParams P;
  const bool valid = read_args(A, n, &k, &P);
  const key_t* s = sorted + r * n;
  if (row_is_unsolvable(valid, s, n)) {
    save_nan_row(blocks + 2 * r, gamma + r);
    return;
  }
  save_block(solve_sorted_row_framed(s, n, k, P), blocks + 2 * r, gamma + r);
}

// ---- Step 2 for long rows: one thread block per row -----------------------------------------
// Growing the pooled block one element at a time costs its size in sequential steps, which is
// thousands on rows of millions. Here a thread block runs pav.h's root search for the pooled
// block (find_block_by_root, for every p) and its exact offset (block_rel) together: every thread
// runs the same search, and each sum over the pooled block's members is split over the threads
// and reduced (ThreadBlockSum); the reduced values, hence the search's steps, are identical in
// all threads.

// Sum of a pair over all threads of the thread block; every thread gets the totals.
__device__ inline void thread_block_sum2(double* v0, double* v1) {
  __shared__ double partial[2][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double a = *v0, b = *v1;
  for (int offset = 16; offset > 0; offset /= 2) {
    a += __shfl_down_sync(0xffffffffu, a, offset);
    b += __shfl_down_sync(0xffffffffu, b, offset);
  }
  __syncthreads();  // `partial` may still be read from the previous call
  if (lane == 0) {
    partial[0][warp] = a;
    partial[1][warp] = b;
  }
  __syncthreads();
  a = b = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) {  // every thread sums the few warp partials itself
    a += partial[0][w];
    b += partial[1][w];
  }
  *v0 = a;
  *v1 = b;
}

// pav.h's `sum` over [a, b) split over the threads of a thread block; every thread must call it.
struct ThreadBlockSum {
  template <typename T>
  SP_HD Sums operator()(int64_t a, int64_t b, const T& term) const {
#ifdef __CUDA_ARCH__
    Sums part{0.0, 0.0};
    for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x) {
      const Sums t = term(i);
      part.first += t.first;
      part.second += t.second;
    }
    thread_block_sum2(&part.first, &part.second);
    return part;
#else
    return SerialSum{}(a, b, term);  // (never run: the kernels are device code)
#endif
  }
};

template <typename key_t>
__global__ void __launch_bounds__(kThreads) solve_long_rows_kernel(
    const key_t* __restrict__ sorted, int64_t n, ScalarArgs A, int64_t* __restrict__ blocks,
    double* __restrict__ gamma) {
  const int64_t r = blockIdx.x;
  int64_t k;
  TopkParams P;
  const bool valid = read_args(A, n, &k, &P);
  const key_t* s = sorted + r * n;
  if (row_is_unsolvable(valid, s, n)) {  // the same in every thread
    if (threadIdx.x == 0) save_nan_row(blocks + 2 * r, gamma + r);
    return;
  }
  const BoundaryBlock blk = solve_sorted_row_framed(s, n, k, P, ThreadBlockSum{}, /*by_root=*/true);
  if (threadIdx.x == 0) save_block(blk, blocks + 2 * r, gamma + r);
}

// Step 3: every sorted position t = r * n + i writes y at its original position and perm.
template <typename scalar_t, typename key_t, typename index_t>
__global__ void write_outputs_kernel(const scalar_t* __restrict__ x, const key_t* __restrict__ sorted,
                                     const index_t* __restrict__ order, int64_t rows, int64_t n,
                                     ScalarArgs A, const int64_t* __restrict__ blocks,
                                     const double* __restrict__ gamma, scalar_t* __restrict__ y,
                                     int32_t* __restrict__ perm) {
  int64_t k;
  TopkParams P;
  read_args(A, n, &k, &P);  // invalid values were recorded in `blocks` (a < 0) by step 2
  const int64_t total = rows * n;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / n, i = t - r * n;
    const int64_t j = order[t];
    perm[t] = static_cast<int32_t>(j);
    const int64_t a = blocks[2 * r], b = blocks[2 * r + 1];
    const int64_t dst = r * n + j;
    if (a < 0) {
      y[dst] = static_cast<scalar_t>(NAN);
    } else if (i < a) {  // kept singleton
      y[dst] = kept_output(x[dst], static_cast<double>(sorted[t]), P);
    } else if (i < b) {  // pooled boundary block, in the row's frame
      const Frame F = make_frame(static_cast<double>(sorted[r * n + k - 1]), P);
      y[dst] = framed_block_output(x[dst], static_cast<double>(sorted[t]), gamma[r], F);
    } else {
      y[dst] = scalar_t(0);
    }
  }
}

// Step 3, p > 2, the mask: the pooled block's last member takes the remainder of the block's share
// (pav.h's mask_remainder, as on the CPU). One thread block per row.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) mask_remainder_kernel(const int32_t* __restrict__ perm, int64_t n,
                                                                  ScalarArgs A, const int64_t* __restrict__ blocks,
                                                                  scalar_t* __restrict__ y) {
  const int64_t r = blockIdx.x;
  int64_t k;
  TopkParams P;
  read_args(A, n, &k, &P);
  const int64_t a = blocks[2 * r], b = blocks[2 * r + 1];
  if (a < 0 || a >= b) return;  // the same in every thread
  double rest = 0.0, unused = 0.0;
  for (int64_t i = a + threadIdx.x; i + 1 < b; i += blockDim.x) {
    rest += static_cast<double>(y[r * n + perm[r * n + i]]);
  }
  thread_block_sum2(&rest, &unused);
  if (threadIdx.x == 0) y[r * n + perm[r * n + b - 1]] = static_cast<scalar_t>(mask_remainder(k, a, rest));
}

// The pooled block's frame of row r in the backward: from its junction key (sorted position k - 1).
template <typename scalar_t>
__device__ inline Frame row_frame(const scalar_t* x, const int32_t* perm, int64_t r, int64_t n, int64_t k,
                                  const TopkParams& P) {
  const double xc = static_cast<double>(x[r * n + perm[r * n + k - 1]]);
  return make_frame(P.magnitude ? ::fabs(xc) : xc + 0.0, P);
}

// The BlockGradSums of every thread of the thread block, summed by a tree in shared memory:
// every thread gets the totals.
__device__ inline BlockGradSums thread_block_tree_sum(const BlockGradSums& t) {
  __shared__ double shared[3][kThreads];
  shared[0][threadIdx.x] = t.E;
  shared[1][threadIdx.x] = t.Ge;
  shared[2][threadIdx.x] = t.G;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      for (int c = 0; c < 3; ++c) shared[c][threadIdx.x] += shared[c][threadIdx.x + stride];
    }
    __syncthreads();
  }
  return {shared[0][0], shared[1][0], shared[2][0]};
}

// Backward step 1: one thread block per row reduces the row's BlockGradSums (pav.h) over its
// pooled block into sums[3 r .. 3 r + 2] (E, Ge, G).
template <typename scalar_t>
__global__ void block_grad_sums_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                       const int32_t* __restrict__ perm, const int64_t* __restrict__ blocks,
                                       const double* __restrict__ gamma, int64_t n, ScalarArgs A,
                                       double* __restrict__ sums) {
  const int64_t r = blockIdx.x;
  int64_t k;
  TopkParams P;
  const bool valid = read_args(A, n, &k, &P);
  const int64_t a = blocks[2 * r], b = blocks[2 * r + 1];
  BlockGradSums t;
  if (valid && a >= 0 && a < b) {
    const Frame F = row_frame(x, perm, r, n, k, P);
    for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x) {
      const int64_t j = r * n + perm[r * n + i];
      const double xv = static_cast<double>(x[j]);
      const double gt = static_cast<double>(g[j]) * grad_sign(xv, P);
      t.add(gt, block_member_slope(key_of(xv, P), gamma[r], F), i < k, P);
    }
  }
  const BlockGradSums total = thread_block_tree_sum(t);
  if (threadIdx.x == 0) {
    sums[3 * r] = total.E;
    sums[3 * r + 1] = total.Ge;
    sums[3 * r + 2] = total.G;
  }
}

// Backward step 2: the gradient of every sorted position t = r * n + i (pav.h's closed-form
// backward, given the row's block sums).
template <typename scalar_t>
__global__ void write_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                  const int32_t* __restrict__ perm, const int64_t* __restrict__ blocks,
                                  const double* __restrict__ gamma, const double* __restrict__ sums,
                                  int64_t rows, int64_t n, ScalarArgs A, scalar_t* __restrict__ gx) {
  int64_t k;
  TopkParams P;
  const bool valid = read_args(A, n, &k, &P);
  const int64_t total = rows * n;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / n, i = t - r * n;
    const int64_t j = r * n + perm[t];
    const int64_t a = blocks[2 * r], b = blocks[2 * r + 1];
    if (!valid || a < 0) {  // the forward saw a NaN/Inf in this row, or k/lam is invalid
      gx[j] = static_cast<scalar_t>(NAN);
      continue;
    }
    const double xv = static_cast<double>(x[j]);
    const double sg = grad_sign(xv, P);
    const double gv = static_cast<double>(g[j]);
    double out = 0.0;  // pruned singletons, and the mask's kept ones
    if (i < a) {
      if (P.magnitude) out = gv * kept_magnitude_sensitivity(::fabs(xv), P);
    } else if (i < b) {
      const BlockGradSums block_sums{sums[3 * r], sums[3 * r + 1], sums[3 * r + 2]};
      if (block_sums.E > 0) {  // E > 0 whenever the block holds a kept element; stay finite otherwise
        const Frame F = row_frame(x, perm, r, n, k, P);
        out = block_member_grad(gv * sg, sg, block_member_slope(key_of(xv, P), gamma[r], F), block_sums, F, P);
      }
    }
    gx[j] = static_cast<scalar_t>(out);
  }
}

// Long rows: a cub radix sort of (key, int32 position) pairs per row, descending and stable.
// Against torch's sort it moves 4-byte instead of 8-byte positions through every radix pass and
// needs no int64 -> int32 conversion afterwards. Requires rows * n < 2^31.
template <typename key_t>
std::pair<at::Tensor, at::Tensor> sort_rows_descending(const at::Tensor& keys, int64_t rows, int64_t n,
                                                       cudaStream_t stream) {
  const auto options = keys.options();
  at::Tensor sorted = at::empty({rows, n}, options);
  at::Tensor order = at::empty({rows, n}, options.dtype(at::kInt));
  at::Tensor positions = at::arange(n, options.dtype(at::kInt));
  if (rows > 1) positions = positions.repeat({rows});
  const key_t* keys_in = keys.const_data_ptr<key_t>();
  key_t* keys_out = sorted.mutable_data_ptr<key_t>();
  const int32_t* values_in = positions.const_data_ptr<int32_t>();
  int32_t* values_out = order.mutable_data_ptr<int32_t>();
  const int items = static_cast<int>(rows * n);
  constexpr int kBits = sizeof(key_t) * 8;
  size_t temp_bytes = 0;
  if (rows == 1) {
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, temp_bytes, keys_in, keys_out, values_in,
                                                             values_out, items, 0, kBits, stream));
    at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, options.dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(temp.data_ptr(), temp_bytes, keys_in, keys_out,
                                                             values_in, values_out, items, 0, kBits, stream));
  } else {
    at::Tensor offsets = at::arange(0, (rows + 1) * n, n, options.dtype(at::kInt));
    const int32_t* off = offsets.const_data_ptr<int32_t>();
    const int segments = static_cast<int>(rows);
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, keys_in, keys_out, values_in, values_out, items, segments, off, off + 1, 0, kBits,
        stream));
    at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, options.dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        temp.data_ptr(), temp_bytes, keys_in, keys_out, values_in, values_out, items, segments, off, off + 1, 0,
        kBits, stream));
  }
  return {sorted, order};
}

// The ScalarArgs of a call: CPU tensors are read and checked here; tensors on x's device are passed
// by pointer (as int64 / float64, converted on the device if need be; `keep` holds the converted
// copies until the kernels are queued).
ScalarArgs scalar_args(const char* op, const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam,
                       double p, bool magnitude, bool debias, at::Tensor (&keep)[2]) {
  check_soft_topk_kinds(op, x, k, lam, p);
  ScalarArgs A{0, 0.0, nullptr, nullptr, p, magnitude, debias};
  auto on_device = [&](const at::Tensor& t, const char* name) {
    if (!t.is_cuda()) return false;
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": expected ", name, " on the CPU or on x's device ",
                      x.device(), ", got a tensor on ", t.device());
    return true;
  };
  if (on_device(k, "k")) {
    keep[0] = k.to(at::kLong);
    A.k_ptr = keep[0].const_data_ptr<int64_t>();
  } else {
    A.k = check_k_value(op, read_scalar<int64_t>(k), x.size(-1));
  }
  if (on_device(lam, "lam")) {
    keep[1] = lam.to(at::kDouble);
    A.lam_ptr = keep[1].const_data_ptr<double>();
  } else {
    A.lam = check_lam_value(op, read_scalar<double>(lam));
  }
  return A;
}

// Forward step 1: the rows' keys (x, or |x| for the magnitude) sorted descending, and the
// sorted positions' original positions (int32 or int64).
template <typename scalar_t>
std::pair<at::Tensor, at::Tensor> sorted_keys(const at::Tensor& xc, int64_t rows, int64_t n, bool magnitude,
                                              cudaStream_t stream) {
  using key_t = KeyFloat<scalar_t>;
  at::Tensor keys = xc.reshape({rows, n}).to(c10::CppTypeToScalarType<key_t>::value);
  // `+ 0` maps -0.0 to +0.0, as on the CPU (abs already does)
  keys = magnitude ? keys.abs() : keys + 0;
  if (n > kBitonicSortRow && rows * n < INT_MAX) return sort_rows_descending<key_t>(keys, rows, n, stream);
  auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  return {sorted, order};
}

// Forward step 2: each sorted row's pooled block and offset into blocks and gamma.
template <typename key_t>
void solve_sorted_rows(const at::Tensor& sorted, int64_t rows, int64_t n, const ScalarArgs& A,
                       const at::Tensor& blocks, const at::Tensor& gamma, cudaStream_t stream) {
  if (n >= kLongRow) {
    solve_long_rows_kernel<key_t><<<rows, kThreads, 0, stream>>>(
        sorted.const_data_ptr<key_t>(), n, A, blocks.mutable_data_ptr<int64_t>(), gamma.mutable_data_ptr<double>());
  } else {
    solve_rows_kernel<key_t><<<(rows + 127) / 128, 128, 0, stream>>>(
        sorted.const_data_ptr<key_t>(), rows, n, A, blocks.mutable_data_ptr<int64_t>(),
        gamma.mutable_data_ptr<double>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Forward step 3: y and perm from the solved rows (order: int32 or int64 positions), then for
// p > 2 the mask's remainder.
template <typename scalar_t, typename key_t>
void write_outputs(const at::Tensor& xc, const at::Tensor& sorted, const at::Tensor& order, int64_t rows, int64_t n,
                   const ScalarArgs& A, const ForwardOutputs& out, cudaStream_t stream) {
  auto launch = [&](auto* order_ptr) {
    using index_t = std::remove_const_t<std::remove_pointer_t<decltype(order_ptr)>>;
    write_outputs_kernel<scalar_t, key_t, index_t><<<thread_blocks_for(rows * n), kThreads, 0, stream>>>(
        xc.const_data_ptr<scalar_t>(), sorted.const_data_ptr<key_t>(), order_ptr, rows, n, A,
        out.blocks.const_data_ptr<int64_t>(), out.gamma.const_data_ptr<double>(), out.y.mutable_data_ptr<scalar_t>(),
        out.perm.mutable_data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (order.scalar_type() == at::kInt) {
    launch(order.const_data_ptr<int32_t>());
  } else {
    launch(order.const_data_ptr<int64_t>());
  }
  if (!A.magnitude && A.p > 2.0) {
    mask_remainder_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(out.perm.const_data_ptr<int32_t>(), n, A,
                                                                   out.blocks.const_data_ptr<int64_t>(),
                                                                   out.y.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_topk_forward_cuda(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, double p, bool magnitude,
    bool debias, bool full_sort) {
  (void)full_sort;  // the CUDA path always sorts whole rows
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor keep[2];
  const ScalarArgs A = scalar_args("soft_topk_forward", x, k, lam, p, magnitude, debias, keep);
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  const ForwardOutputs out = empty_forward_outputs(xc);
  const at::Tensor &y = out.y, &perm = out.perm, &blocks = out.blocks, &gamma = out.gamma;
  if (rows == 0) return {y, perm, blocks, gamma};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_topk_forward_cuda", [&] {
    using key_t = KeyFloat<scalar_t>;
    const auto [sorted, order] = sorted_keys<scalar_t>(xc, rows, n, magnitude, stream);
    solve_sorted_rows<key_t>(sorted, rows, n, A, blocks, gamma, stream);
    write_outputs<scalar_t, key_t>(xc, sorted, order, rows, n, A, out, stream);
  });
  return {y, perm, blocks, gamma};
}

at::Tensor soft_topk_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& perm,
                                   const at::Tensor& blocks, const at::Tensor& gamma, const at::Tensor& k,
                                   const at::Tensor& lam, double p, bool magnitude, bool debias) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor keep[2];
  const ScalarArgs A = scalar_args("soft_topk_backward", x, k, lam, p, magnitude, debias, keep);
  check_saved_state("soft_topk_backward", grad, x, perm, blocks, gamma);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(xc.scalar_type()).contiguous();
  const at::Tensor permc = perm.contiguous();
  const at::Tensor blocksc = blocks.contiguous();
  const at::Tensor gammac = gamma.contiguous();
  const int64_t n = xc.size(-1);
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  at::Tensor gx = at::empty_like(xc);
  if (rows == 0) return gx;
  at::Tensor sums = at::empty({rows, 3}, xc.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_topk_backward_cuda", [&] {
    block_grad_sums_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), permc.const_data_ptr<int32_t>(),
        blocksc.const_data_ptr<int64_t>(), gammac.const_data_ptr<double>(), n, A,
        sums.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    write_grad_kernel<scalar_t><<<thread_blocks_for(rows * n), kThreads, 0, stream>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), permc.const_data_ptr<int32_t>(),
        blocksc.const_data_ptr<int64_t>(), gammac.const_data_ptr<double>(), sums.const_data_ptr<double>(),
        rows, n, A, gx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(smoothprune, CUDA, m) {
  m.impl("soft_topk_forward", &soft_topk_forward_cuda);
  m.impl("soft_topk_backward", &soft_topk_backward_cuda);
}

}  // namespace smoothprune
