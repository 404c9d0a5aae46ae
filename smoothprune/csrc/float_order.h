// Floats as unsigned integers of the same order: the one such map of the kernels (the selection's
// bucket bounds, the radix-sort keys, the row's min/max reduction, bisection in pav.h's
// solve_decreasing). Host and device code; C++17.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

// Host and device code where compiled by nvcc, host code otherwise.
#ifdef __CUDACC__
#define SP_HD __host__ __device__
#else
#define SP_HD
#endif

namespace smoothprune {

template <typename F>
using OrderedUint = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;

// The sign bit of F, the top bit of its ordered integer.
template <typename F>
SP_HD constexpr OrderedUint<F> ordered_sign_bit() {
  return OrderedUint<F>(1) << (8 * sizeof(F) - 1);
}

// v as an unsigned integer of the same order: a positive float gets the sign bit set, a negative
// one every bit flipped. -0.0 sits just below +0.0, and the next float up is "+ 1". Branch-free,
// so that loops over it vectorize; the sign bit is flipped last, so that a caller flipping it back
// (a signed view, as in soft_topk_cpu.cpp's make_keys) costs nothing.
template <typename F>
SP_HD inline OrderedUint<F> ordered_bits(F v) {
  using U = OrderedUint<F>;
  U u;
  ::memcpy(&u, &v, sizeof u);
  const U negative = U(0) - (u >> (8 * sizeof(U) - 1));  // every bit set for a set sign bit
  return (u ^ (negative & ~ordered_sign_bit<F>())) ^ ordered_sign_bit<F>();
}

// The float of an ordered integer (the inverse of ordered_bits).
template <typename F>
SP_HD inline F from_ordered_bits(OrderedUint<F> o) {
  const OrderedUint<F> u = (o & ordered_sign_bit<F>()) ? (o ^ ordered_sign_bit<F>()) : ~o;
  F v;
  ::memcpy(&v, &u, sizeof v);
  return v;
}

}  // namespace smoothprune
