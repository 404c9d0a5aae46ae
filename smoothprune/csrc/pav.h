// Exact PAV for the sparse smooth top-k operators, one sorted row at a time (float64), and the
// closed-form backward of its pooled block.
//
// Notation (docs/design.md §2): s is the row sorted in descending order (s = x for the mask,
// s = |x| for the magnitude), w = 1_k, q = p / (p - 1), lam_q1 = lam^(q-1),
// psi~(z) = sign(z) |z|^(q-1). The isotonic problem pools adjacent violators; a block B takes the
// value gamma solving  sum_B psi~(s_i - gamma) = lam_q1 * sum_B w_i * (1 for the mask, gamma for
// the magnitude).
//
// Why a single block: a singleton's value val_i is s_i - lam (mask, i < k), kept_value(s_i)
// (magnitude, i < k) or s_i (i >= k). Each is non-increasing along the sorted row within
// {i < k} and within {i >= k}, so the only possible violation is at the junction k-1 | k.
// PAV therefore produces at most one pooled block [a, b) with a < k < b, grown outwards from the
// junction; every other element is a singleton whose output is known in closed form
// (mask: 1 above, 0 below; magnitude: the kept value above, 0 below).
//
// Everything here is host and device code (SP_HD): the CPU kernels (soft_topk_cpu.cpp) and the
// CUDA kernels (cuda/soft_topk_cuda.cu) solve each row, and differentiate it, with the very same
// functions. Rows may be stored as float or double (template S); all arithmetic is float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "float_order.h"

namespace smoothprune {

// Keys (x or |x|) are stored in float64 for float64 inputs, in float32 otherwise.
template <typename scalar_t>
using KeyFloat = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

enum class PKind { kTwo, kFourThirds, kGeneral };

struct TopkParams {
  double lam;
  double log_lam;  // log(lam): exact even where lam itself is not a float64 (a frame's lam)
  double p;
  double q;       // p / (p - 1)
  double lam_q1;  // lam^(q-1) (the closed forms only)
  PKind kind;
  bool magnitude;
  bool debias;

  SP_HD static TopkParams make(double lam, double p, bool magnitude, bool debias) {
    return make_log(::log(lam), p, magnitude, debias);
  }

  // The closed forms of p = 2 and p = 4/3 need lam (and lam^3) to be ordinary float64 numbers;
  // any other lam, and any other p, takes the general solver, which only ever forms bounded
  // quantities (see psi).
  SP_HD static TopkParams make_log(double log_lam, double p, bool magnitude, bool debias) {
    TopkParams P;
    P.log_lam = log_lam;
    P.lam = ::exp(log_lam);
    P.p = p;
    P.q = p / (p - 1.0);
    P.lam_q1 = ::exp((P.q - 1.0) * log_lam);
    if (::fabs(p - 2.0) < 1e-12 && ::fabs(log_lam) < 690.0) {
      P.kind = PKind::kTwo;
    } else if (::fabs(p - 4.0 / 3.0) < 1e-12 && ::fabs(log_lam) < 230.0) {
      P.kind = PKind::kFourThirds;
    } else {
      P.kind = PKind::kGeneral;
    }
    P.magnitude = magnitude;
    P.debias = debias;
    return P;
  }
};

// The pooled block [a, b) of a solved row (empty when a == b) and its value gamma; rel is
// gamma minus the row's junction key (the k-th largest), exact where gamma - key would cancel.
struct BoundaryBlock {
  int64_t a;
  int64_t b;
  double gamma;
  double rel;
};

SP_HD inline double signed_pow(double z, double e) {
  return z >= 0 ? ::pow(z, e) : -::pow(-z, e);
}

// lam * v for v >= 0, also where lam is beyond float64's range.
SP_HD inline double lam_times(double v, const TopkParams& P) {
  if (P.kind != PKind::kGeneral) return P.lam * v;
  return v > 0 ? ::exp(P.log_lam + ::log(v)) : 0.0;
}

// Output-side map y = psi(z) = sign(z) (|z| / lam)^(q-1). A block member has
// 0 <= psi(z) <= 1 (mask) or <= gamma (magnitude): computed directly (never through
// |z|^(q-1) and lam^(q-1), which overflow for p near 1 or extreme lam).
SP_HD inline double psi(double z, const TopkParams& P) {
  switch (P.kind) {
    case PKind::kTwo:
      return z / P.lam;
    case PKind::kFourThirds: {
      const double r = z / P.lam;
      return r * r * r;
    }
    default: {
      if (z == 0) return 0.0;
      const double v = ::exp((P.q - 1.0) * (::log(::fabs(z)) - P.log_lam));
      return z > 0 ? v : -v;
    }
  }
}

// psi'(z) for z >= 0. For p > 2 (q < 2) it is infinite at z = 0; z is floored at
// 1e-12 min(lam, 1) there (in a frame, below the members' z-scale, which is at most lam and at
// most the key), far below any float32 resolution of y.
SP_HD inline double psi_deriv(double z, const TopkParams& P) {
  switch (P.kind) {
    case PKind::kTwo:
      return 1.0 / P.lam;
    case PKind::kFourThirds: {
      const double r = z / P.lam;
      return 3.0 * r * r / P.lam;
    }
    default: {
      double az = ::fabs(z);
      const double floor = ::exp(std::min(P.log_lam, 0.0) - 27.631021115928547);  // 1e-12 min(lam, 1)
      if (P.q < 2.0) az = std::max(az, floor);
      if (az == 0) return P.q > 2.0 ? 0.0 : ::exp(-P.log_lam);
      return (P.q - 1.0) * psi(az, P) / az;
    }
  }
}

// Real root of u^3 + P u + Q = 0 with P >= 0 (the only real root). Rescaled so that no power
// overflows, and written as -Q / (A^2 + P/3 + B^2) (= A - B of Cardano's formula, without the
// cancellation when |Q| << P^(3/2)).
SP_HD inline double depressed_cubic_root(double Pc, double Qc) {
  const double scale = std::max(::sqrt(Pc), ::cbrt(::fabs(Qc)));
  if (!(scale > 0)) return 0.0;
  const double P = Pc / scale / scale;  // (divided in turn: scale^3 alone may overflow)
  const double Q = Qc / scale / scale / scale;
  const double D = ::sqrt(0.25 * Q * Q + P * P * P / 27.0);
  const double A = ::cbrt(0.5 * ::fabs(Q) + D);
  const double B = P / (3.0 * A);
  return scale * (-Q / (A * A + P / 3.0 + B * B));
}

// A float64's position among the float64 numbers in order, counted from 0 where -0.0 and +0.0
// both sit (ordered_bits with its two zeros merged), and the float64 at a position.
SP_HD inline int64_t float64_rank(double v) {
  constexpr uint64_t kSign = ordered_sign_bit<double>();
  const uint64_t o = ordered_bits(v);
  return static_cast<int64_t>(o - kSign) + (o < kSign ? 1 : 0);
}

SP_HD inline double float64_at_rank(int64_t r) {
  return from_ordered_bits<double>(static_cast<uint64_t>(r) + ordered_sign_bit<double>() - (r < 0 ? 1 : 0));
}

// The float64 halfway between lo < hi in order (not in value): bisection by it reaches adjacent
// numbers in at most 64 steps whatever the bracket spans (1e-300 .. 1 as well as 1 .. 2).
SP_HD inline double ordered_midpoint(double lo, double hi) {
  const int64_t a = float64_rank(lo), b = float64_rank(hi);
  return float64_at_rank((a >> 1) + (b >> 1) + (a & b & 1));
}

// Root of a decreasing f on [lo, hi] with f(lo) >= 0 >= f(hi) (f may be infinite there).
// `f(x, &df)` returns f(x) and stores f'(x). Every evaluation shrinks the bracket; a Newton step
// is taken when it stays inside and the bracket keeps halving, a bisection step otherwise. The
// search ends on a zero or when the bracket's ends are adjacent (or within 2 ulps) — never on a
// small step alone, which is no proof near an infinite slope (p > 2 at z = 0). A Newton step
// shorter than the tolerance is stretched to it, so that the root gets bracketed from both sides.
// Returns the end of the final bracket with the smaller |f| (an end never evaluated counts as
// infinite): where f jumps across the root (membership changing), the bracket's ends are the
// only points next to it.
template <typename F>
SP_HD double solve_decreasing(F&& f, double lo, double hi, double x) {
  constexpr double kEps = 2.220446049250313e-16;  // float64 machine epsilon
  if (!(x > lo && x < hi)) x = ordered_midpoint(lo, hi);
  double f_lo = INFINITY, f_hi = -INFINITY;
  double width_before = INFINITY, width_now = hi - lo;
  for (int it = 0; it < 300; ++it) {
    double df = 0.0;
    const double fx = f(x, &df);
    if (fx == 0.0) return x;
    if (fx > 0) {
      lo = x;
      f_lo = fx;
    } else {
      hi = x;
      f_hi = fx;
    }
    const double mid = ordered_midpoint(lo, hi);
    if (mid <= lo || mid >= hi || hi - lo <= 2.0 * kEps * std::max(::fabs(lo), ::fabs(hi))) break;
    const double width = hi - lo;
    const bool halving = width <= 0.5 * width_before;  // over the last two steps
    width_before = width_now;
    width_now = width;
    // A zero, infinite or NaN derivative gives no usable Newton step.
    double next = ((df - df == 0.0) && df < 0) ? x - fx / df : NAN;
    const double tol = 2.0 * kEps * ::fabs(x);
    if (next - x < tol && next - x > -tol) next = next > x ? x + tol : x - tol;
    if (!(next > lo && next < hi) || (it >= 2 && !halving)) next = mid;
    x = next;
  }
  return ::fabs(f_lo) <= ::fabs(f_hi) ? lo : hi;
}

// Magnitude singleton with w = 1 at key s >= 0: its value is v = s - z, where z solves
// psi(z) = s - z (that is, s = v + lam v^(p-1)). Returns z, the small one of the two when lam
// is small (v = s - z then keeps every digit).
SP_HD inline double kept_shrink(double s, const TopkParams& P) {
  if (s <= 0) return 0.0;
  if (P.kind == PKind::kTwo) return s / (1.0 + 1.0 / P.lam);
  if (P.kind == PKind::kFourThirds) {
    // r = v^(1/3) solves r^3 + lam r - s = 0, and z = lam r.
    return P.lam * depressed_cubic_root(P.lam, -s);
  }
  auto f = [&](double z, double* df) {
    *df = -1.0 - psi_deriv(z, P);
    return s - z - psi(z, P);
  };
  return solve_decreasing(f, 0.0, s, NAN);
}

// The kept value v = s - z of a magnitude singleton at key s whose shrink kept_shrink(s) is z.
// Where lam shrinks s to a small v, v is solved for directly (s - z would cancel).
SP_HD inline double kept_value_of(double s, double z, const TopkParams& P) {
  if (!(s > 0)) return 0.0;
  if (P.kind == PKind::kTwo) return s / (1.0 + P.lam);
  if (P.kind == PKind::kFourThirds) {
    const double r = z / P.lam;
    return std::min(r * r * r, s);  // (v <= s: no rounding may grow it)
  }
  if (z <= 0.5 * s) return s - z;
  auto f = [&](double v, double* df) {  // psi(s - v) = v, decreasing in v
    *df = -psi_deriv(s - v, P) - 1.0;
    return psi(s - v, P) - v;
  };
  const double v = solve_decreasing(f, 0.0, 0.5 * s, s - z);
  // A value below the smallest subnormal (tiny s, large lam) leaves the bracket (0, 4.9e-324)
  // whose end 0 was never evaluated: 0 is the correctly rounded value when its residual is the
  // smaller one.
  constexpr double kSmallestSubnormal = 4.9406564584124654e-324;
  double unused = 0.0;
  if (v == kSmallestSubnormal && ::fabs(f(0.0, &unused)) <= ::fabs(f(v, &unused))) return 0.0;
  return v;
}

// Magnitude singleton with w = 1: v solves s = v + lam * v^(p-1); also returns z = s - v.
SP_HD inline double kept_value(double s, const TopkParams& P, double* z_out) {
  const double z = kept_shrink(s, P);
  if (z_out) *z_out = z;
  return kept_value_of(s, z, P);
}

// Singleton value val_i of sorted position i.
SP_HD inline double singleton_value(double s, bool kept, const TopkParams& P) {
  if (!kept) return s;
  return P.magnitude ? kept_value(s, P, nullptr) : s - P.lam;
}

// Output of a kept singleton with input xj and key s: 1 (mask), xj itself (de-biased magnitude,
// exactly), sign(xj) * kept_value(s) (raw magnitude).
template <typename scalar_t>
SP_HD inline scalar_t kept_output(scalar_t xj, double s, const TopkParams& P) {
  if (!P.magnitude) return scalar_t(1);
  if (P.debias) return xj;
  const double v = kept_value(s, P, nullptr);
  return static_cast<scalar_t>(static_cast<double>(xj) < 0 ? -v : v);
}

// ---- Scale-free frames -------------------------------------------------------------------
// The operators' invariances (docs/design.md §6): the mask of (x, lam) is the mask of
// ((x - c) / lam, lam = 1), and the magnitude of (x, lam) is c times the magnitude of
// (x / c, lam c^(p-2)). Solving in the frame of the row's junction key c keeps every quantity
// near 1 whatever lam and the keys' scale (lam = 1e300, subnormal lam, keys near 1.8e308); the
// frame's lam is kept as its logarithm, which float64 always holds.
struct Frame {
  double c;      // the junction key (the k-th largest)
  double unit;   // differences from c are measured in units of lam (mask) or c (magnitude)
  double cf;     // the junction key in the frame: 0 (mask, unused) or 1 (magnitude)
  TopkParams P;  // the frame's parameters
  SP_HD double diff(double key) const { return (key - c) / unit; }
};

SP_HD inline Frame make_frame(double c, const TopkParams& raw) {
  // Below this frame lam (magnitude), a block member lies within 1e-280 of the junction key:
  // only exact ties pool, and they split the same way for every such lam; flooring it keeps
  // lam gamma^(p-1) a normal float64.
  constexpr double kLogFloorLam = -644.7238260383328;  // log(1e-280)
  if (!raw.magnitude) return {c, raw.lam, 0.0, TopkParams::make_log(0.0, raw.p, false, raw.debias)};
  if (!(c > 0)) return {c, 1.0, c, raw};  // all keys from the junction down are 0: nothing pools
  const double log_lam = std::max(raw.log_lam + (raw.p - 2.0) * ::log(c), kLogFloorLam);
  return {c, c, 1.0, TopkParams::make_log(log_lam, raw.p, true, raw.debias)};
}

// Output of a pooled block member (input xj, key s) of a row solved in frame F with offset rel.
// Exact outputs lie in [0, 1] (mask) or keep sign(x) (magnitude); a member whose key rounds
// across the threshold would leave that range by a rounding: clamp it back.
template <typename scalar_t>
SP_HD inline scalar_t framed_block_output(scalar_t xj, double s, double rel, const Frame& F) {
  const double z = F.diff(s) - rel;
  if (!F.P.magnitude) return static_cast<scalar_t>(std::min(std::max(psi(z, F.P), 0.0), 1.0));
  double out = F.unit * std::max(psi(z, F.P) + (F.P.debias ? z : 0.0), 0.0);
  if (static_cast<double>(xj) < 0) out = -out;
  return static_cast<scalar_t>(out);
}

// For p > 2 the mask of a pooled block's last member (the smallest key) is infinitely sensitive
// to the offset near 0: one ulp of rel can move it by more than rounding. It takes the remainder
// of the block's share k - a instead (rest: the sum of the other members' masks), so that the
// mask sums to k.
SP_HD inline double mask_remainder(int64_t k, int64_t a, double rest) {
  return std::min(std::max(static_cast<double>(k - a) - rest, 0.0), 1.0);
}

// ---- One sorted row ----------------------------------------------------------------------
// A pair of sums over the sorted positions [a, b): `sum(a, b, term)` adds term(i) (a Sums) over
// them. The CPU sums serially (SerialSum); the CUDA long-row kernel passes a sum over the threads
// of a thread block, and so runs these very functions cooperatively.
struct Sums {
  double first;
  double second;
};

struct SerialSum {
  template <typename T>
  SP_HD Sums operator()(int64_t a, int64_t b, const T& term) const {
    Sums total{0.0, 0.0};
    for (int64_t i = a; i < b; ++i) {
      const Sums t = term(i);
      total.first += t.first;
      total.second += t.second;
    }
    return total;
  }
};

// The solver reads the row as differences d_i = s_i - c from the junction key c = s_{k-1}
// (`d(i)`, descending, d(k-1) = 0) and finds rel = gamma - c: where lam is tiny against the keys,
// gamma - s_i would cancel to nothing while rel keeps every digit. The mask's equations involve
// differences only; the magnitude's also need the absolute value gamma = c + rel.

// Value offset of a kept singleton at difference d: val - c, from whichever of the shrink z
// and the value v is the small one (the other would cancel).
SP_HD inline double kept_rel(double d, double c, const TopkParams& P) {
  if (!P.magnitude) return d - P.lam;
  const double s = c + d, z = kept_shrink(s, P);
  return z <= 0.5 * s ? d - z : kept_value_of(s, z, P) - c;
}

// The difference below which a kept singleton's value falls under rel (it then joins a block
// of value c + rel): rel + lam (mask), rel + lam gamma^(p-1) (magnitude). Non-decreasing in rel.
SP_HD inline double kept_threshold_rel(double rel, double c, const TopkParams& P) {
  if (!P.magnitude) return rel + P.lam;
  const double g = c + rel;
  return g > 0 ? rel + lam_times(::pow(g, P.p - 1.0), P) : rel;
}

// The key below which a kept singleton's value falls under g (it then joins a block of value g):
// g + lam g^(p-1) for the magnitude, g + lam for the mask. Non-decreasing in g.
SP_HD inline double kept_threshold(double g, const TopkParams& P) {
  return g + kept_threshold_rel(0.0, g, P);
}

// The block equation of the members [a, b) for the offset rel, with its slope:
//   sum psi(d_i - rel) - W (1 for the mask, gamma for the magnitude),  W = #{members < k}.
// Decreasing in rel; every term is bounded for members (psi <= 1 or <= gamma).
template <typename D, typename Sum>
SP_HD inline double block_equation(const D& d, int64_t a, int64_t b, int64_t k, double c, double rel,
                                   const TopkParams& P, const Sum& sum, double* df) {
  const Sums t = sum(a, b, [&](int64_t i) {
    const double z = d(i) - rel;
    return Sums{psi(z, P), psi_deriv(std::max(z, 0.0), P)};
  });
  const double W = static_cast<double>(std::min(b, k) - a);
  *df = -t.second - (P.magnitude ? W : 0.0);
  return t.first - W * (P.magnitude ? c + rel : 1.0);
}

// What the closed forms need of a block: its m members, W of them kept-side (w = 1), the sum S1
// of their differences and, for p = 4/3, their central moments M2 and M3.
struct BlockMoments {
  double m, W, S1, M2, M3;
};

// p = 2: the block's exact offset (the block equation is linear in rel).
SP_HD inline double linear_rel(const BlockMoments& B, double c, const TopkParams& P) {
  return P.magnitude ? (B.S1 - P.lam * B.W * c) / (B.m + P.lam * B.W) : (B.S1 - P.lam * B.W) / B.m;
}

// p = 4/3: mu + u, u the real root of
//   sum (e_i - u)^3 = M3 - 3 u M2 - m u^3 = lam^3 W (mask) or lam^3 W gamma (magnitude),
// e_i = d_i - mu: exact in exact arithmetic, the start that Newton polishes in block_rel.
SP_HD inline double cubic_rel(const BlockMoments& B, double c, const TopkParams& P) {
  const double mu = B.S1 / B.m;
  const double l3W = P.lam_q1 * B.W;
  const double u = P.magnitude ? depressed_cubic_root((3.0 * B.M2 + l3W) / B.m, (l3W * (c + mu) - B.M3) / B.m)
                               : depressed_cubic_root(3.0 * B.M2 / B.m, (l3W - B.M3) / B.m);
  return mu + u;
}

// The closed-form offset of a block (p = 2 or p = 4/3).
SP_HD inline double closed_form_rel(const BlockMoments& B, double c, const TopkParams& P) {
  return P.kind == PKind::kTwo ? linear_rel(B, c, P) : cubic_rel(B, c, P);
}

// The block [a, b)'s size, kept-side count and sum of differences (one pass; no central moments).
template <typename D, typename Sum>
SP_HD inline BlockMoments block_sums(const D& d, int64_t a, int64_t b, int64_t k, const Sum& sum) {
  const double S1 = sum(a, b, [&](int64_t i) { return Sums{d(i), 0.0}; }).first;
  return {static_cast<double>(b - a), static_cast<double>(std::min(b, k) - a), S1, 0.0, 0.0};
}

// B's central moments M2 and M3, in a second pass over the block about its mean: accurate
// whatever the block's spread (unlike moments from running sums of powers).
template <typename D, typename Sum>
SP_HD inline void add_central_moments(const D& d, int64_t a, int64_t b, const Sum& sum, BlockMoments* B) {
  const double mu = B->S1 / B->m;
  const Sums M = sum(a, b, [&](int64_t i) {
    const double e = d(i) - mu;
    return Sums{e * e, e * e * e};
  });
  B->M2 = M.first;
  B->M3 = M.second;
}

// Exact offset rel of the fixed block [a, b) (k splits it into w = 1 and w = 0 parts): the
// closed form for p = 2; for p = 4/3 the closed form polished by Newton on the block equation;
// the root of the block equation for any other p.
template <typename D, typename Sum>
SP_HD inline double block_rel(const D& d, int64_t a, int64_t b, int64_t k, double c, const TopkParams& P,
                              const Sum& sum) {
  BlockMoments B = block_sums(d, a, b, k, sum);
  if (P.kind == PKind::kTwo) return linear_rel(B, c, P);
  double start = NAN;
  if (P.kind == PKind::kFourThirds) {
    add_central_moments(d, a, b, sum, &B);
    start = cubic_rel(B, c, P);
  }
  const double lo = P.magnitude ? -c : d(b - 1) - P.lam;
  const double hi = d(a);
  auto eq = [&](double rel, double* df) { return block_equation(d, a, b, k, c, rel, P, sum, df); };
  return solve_decreasing(eq, lo, hi, start);
}

// Running sums of a growing block's differences and their powers, O(1) per member.
struct RunningMoments {
  double m = 0, W = 0, S1 = 0, S2 = 0, S3 = 0;

  SP_HD void add(double e, bool kept) {
    m += 1;
    W += kept ? 1.0 : 0.0;
    S1 += e;
    S2 += e * e;
    S3 += e * e * e;
  }
  SP_HD BlockMoments central() const {
    const double mu = S1 / m;
    const double M2 = std::max(S2 - S1 * mu, 0.0);
    const double M3 = S3 - 3.0 * mu * S2 + 2.0 * mu * mu * S1;
    return {m, W, S1, M2, M3};
  }
};

// Grows the boundary block outwards from the junction with O(1) updates (p = 2 and p = 4/3):
// running sums of the differences keep the merge decisions accurate.
template <typename D>
SP_HD inline void grow_block_closed_form(const D& d, int64_t n, int64_t k, double c, const TopkParams& P,
                                         int64_t* a_out, int64_t* b_out) {
  RunningMoments moments;
  auto add = [&](int64_t i) { moments.add(d(i), i < k); };
  int64_t a = k - 1, b = k + 1;
  add(k - 1);
  add(k);
  double rel = closed_form_rel(moments.central(), c, P);
  for (;;) {
    if (a > 0 && kept_rel(d(a - 1), c, P) < rel) {
      add(--a);
    } else if (b < n && d(b) > rel) {
      add(b++);
    } else {
      break;
    }
    rel = closed_form_rel(moments.central(), c, P);
  }
  *a_out = a;
  *b_out = b;
}

// First i in [lo, hi) of the descending row with d(i) < t (or d(i) <= t when or_equal).
template <typename D>
SP_HD inline int64_t first_below_d(const D& d, int64_t lo, int64_t hi, double t, bool or_equal) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const double v = d(mid);
    if (v < t || (or_equal && v == t)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Any p: the block's offset is the root of the decreasing selection count
//   Phi(rel) = sum_i sel_i(rel) - k,  sel_i = clamp(psi(d_i - rel) / (1 or gamma), 0, 1),
// the dual (threshold) view of PAV: every term lies in [0, 1], whatever p and lam. Membership
// for a given rel is read off by binary search: i < k joins iff d_i < kept_threshold_rel(rel),
// i >= k joins iff d_i > rel. Cost: O(block) per evaluation instead of O(block) per merge.
// `lo`: the junction's kept offset kept_rel(0), the bracket's lower end; the upper end is d(k).
// Both ends of the block only move down as rel grows: they are searched once at the bracket's
// ends, and then only between those (a small part of a long row) instead of over the whole row.
template <typename D, typename Sum>
SP_HD inline void find_block_by_root(const D& d, int64_t n, int64_t k, double c, double lo, const TopkParams& P,
                                     const Sum& sum, int64_t* a_out, int64_t* b_out) {
  const double hi = d(k);
  const int64_t a_first = first_below_d(d, 0, k, kept_threshold_rel(hi, c, P), false);
  const int64_t a_last = first_below_d(d, a_first, k, kept_threshold_rel(lo, c, P), false);
  const int64_t b_first = first_below_d(d, k, n, hi, true);
  const int64_t b_last = first_below_d(d, b_first, n, lo, true);
  auto membership = [&](double rel, int64_t* a, int64_t* b) {
    *a = first_below_d(d, a_first, a_last, kept_threshold_rel(rel, c, P), false);
    *b = first_below_d(d, b_first, b_last, rel, true);
  };
  auto phi = [&](double rel, double* df) {
    int64_t a, b;
    membership(rel, &a, &b);
    const double g = P.magnitude ? c + rel : 1.0;
    const Sums t = sum(a, b, [&](int64_t i) {
      const double z = std::max(d(i) - rel, 0.0);
      // gamma = 0 (the magnitude's lam -> infinity): every member fully selected
      if (g <= 0) return Sums{z > 0 ? 1.0 : 0.0, 0.0};
      const double sel = std::min(psi(z, P) / g, 1.0);
      return Sums{sel, P.magnitude ? (psi_deriv(z, P) + sel) / g : psi_deriv(z, P)};
    });
    *df = -t.second;
    return t.first - static_cast<double>(k - a);
  };
  const double rel = solve_decreasing(phi, lo, hi, NAN);
  membership(rel, a_out, b_out);
  // The root sits where membership is about to change; keep the block non-degenerate around k.
  *a_out = std::min(*a_out, k - 1);
  *b_out = std::max(*b_out, k + 1);
}

// Whether the junction pools (then *kept_junction = kept_rel(0), the bracket's lower end).
// Strict violation only: ties between singletons are not pooled, except exact ties at the
// junction, which always pool: lam > 0 splits them, however small lam is against the keys.
template <typename D>
SP_HD inline bool junction_pools(const D& d, int64_t n, int64_t k, double c, const TopkParams& P,
                                 double* kept_junction) {
  if (k <= 0 || k >= n) return false;
  const double dk = d(k);
  const bool tie = dk == 0.0 && (!P.magnitude || c > 0);
  *kept_junction = kept_rel(0.0, c, P);
  return *kept_junction < dk || tie;
}

// Solves one sorted row given as differences from its junction key c (see above): the boundary
// block and its offset (a == b == k when nothing pools). The block is grown in closed form for
// p = 2 and p = 4/3 (sequential, O(block)); `by_root` finds it by the root search for every p,
// which parallelises over the block (`sum`: the CUDA long-row kernel).
template <typename D, typename Sum = SerialSum>
SP_HD inline BoundaryBlock solve_sorted_diffs(const D& d, int64_t n, int64_t k, double c, const TopkParams& P,
                                              const Sum& sum = Sum{}, bool by_root = false) {
  BoundaryBlock blk{k, k, NAN, NAN};
  double kept_junction;
  if (!junction_pools(d, n, k, c, P, &kept_junction)) return blk;
  if (by_root || P.kind == PKind::kGeneral) {
    find_block_by_root(d, n, k, c, kept_junction, P, sum, &blk.a, &blk.b);
  } else {
    grow_block_closed_form(d, n, k, c, P, &blk.a, &blk.b);
  }
  blk.rel = block_rel(d, blk.a, blk.b, k, c, P, sum);
  blk.gamma = c + blk.rel;
  return blk;
}

// Solves the sorted keys s[0, n) (descending) of one row in the frame of its junction key:
// the boundary block and its offset rel in that frame (framed_block_output writes the members).
template <typename S, typename Sum = SerialSum>
SP_HD inline BoundaryBlock solve_sorted_row_framed(const S* s, int64_t n, int64_t k, const TopkParams& P,
                                                   const Sum& sum = Sum{}, bool by_root = false) {
  if (k <= 0 || k >= n) return BoundaryBlock{k, k, NAN, NAN};
  const Frame F = make_frame(static_cast<double>(s[k - 1]), P);
  return solve_sorted_diffs([s, &F](int64_t i) { return F.diff(static_cast<double>(s[i])); }, n, k, F.cf, F.P,
                            sum, by_root);
}

// What the backward reads of a solved row (saved per row as `blocks` [a, b) and `gamma`): the
// block and its offset rel in the row's frame (0 without a block); a == b == -1 and NaN mark a
// row that held a NaN/Inf (or invalid k, lam), whose outputs and gradients are NaN.
SP_HD inline void save_block(const BoundaryBlock& blk, int64_t* ab, double* gamma) {
  ab[0] = blk.a;
  ab[1] = blk.b;
  *gamma = blk.a < blk.b ? blk.rel : 0.0;
}

SP_HD inline void save_nan_row(int64_t* ab, double* gamma) {
  ab[0] = ab[1] = -1;
  *gamma = NAN;
}

// ---- The closed-form backward (docs/design.md §5) --------------------------------------------
// The vector-Jacobian product of a row, given its saved block [a, b) and offset rel. Pruned
// singletons get no gradient, kept ones kept_magnitude_sensitivity (zero for the mask: it is
// locally constant there), pooled block members block_member_grad, after one pass over the block
// for its BlockGradSums.

// The key of an input x as the backward reads it: |x| for the magnitude, x for the mask.
SP_HD inline double key_of(double x, const TopkParams& P) {
  return P.magnitude ? ::fabs(x) : x;
}

// sign(x) with sign(0) = +1: the magnitude is odd in x and differentiated through |x|.
SP_HD inline double grad_sign(double x, const TopkParams& P) {
  return (P.magnitude && x < 0) ? -1.0 : 1.0;
}

// dy/dx of a kept magnitude singleton at key s: exactly 1 de-biased (y = x there), else
// e / (e + 1) with e = psi'(z) at its shrink z.
SP_HD inline double kept_magnitude_sensitivity(double s, const TopkParams& P) {
  double sens = 1.0;
  if (!P.debias) {
    const double e = psi_deriv(kept_shrink(s, P), P);
    sens = e / (e + 1.0);
  }
  return sens;
}

// e = psi'(z) of a block member at key s, in the row's frame F (block offset rel).
SP_HD inline double block_member_slope(double s, double rel, const Frame& F) {
  return psi_deriv(std::max(F.diff(s) - rel, 0.0), F.P);
}

// The block's sums of the gradient formula: E = sum (e_i + w_i [magnitude]), Ge = sum g~_i e_i and
// G = sum g~_i, with g~_i = sign(x_i) g_i.
struct BlockGradSums {
  double E = 0.0, Ge = 0.0, G = 0.0;

  SP_HD void add(double gt, double e, bool kept, const TopkParams& P) {
    E += e + ((P.magnitude && kept) ? 1.0 : 0.0);
    Ge += gt * e;
    G += gt;
  }
};

// The gradient of a block member with sign sg, g~ = gt and slope e, in the frame F:
//   dx = sg (e (g~ - Ge / E) + beta (g~ - e G / E)) / (lam for the mask, 1 else),
// beta = 1 de-biased and 0 otherwise: the Jacobian with c_i = lam^(q-1) e_i, divided through by
// lam^(q-1); the frame measures the mask's offsets in units of lam (F.unit). Needs E > 0, true
// whenever the block holds a kept element.
SP_HD inline double block_member_grad(double gt, double sg, double e, const BlockGradSums& t, const Frame& F,
                                      const TopkParams& P) {
  const double beta = (P.magnitude && P.debias) ? 1.0 : 0.0;
  const double grad_s = e * (gt - t.Ge / t.E) + beta * (gt - e * t.G / t.E);
  return sg * grad_s * (P.magnitude ? 1.0 : 1.0 / F.unit);
}

}  // namespace smoothprune
