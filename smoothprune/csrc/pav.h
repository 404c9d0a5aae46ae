// Exact PAV for the sparse smooth top-k operators, one sorted row at a time (float64).
//
// Notation (DESIGN.md section 2): s is the row sorted in descending order (s = x for the mask,
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
// Everything below TopkParams::make is host and device code: the CUDA kernels
// (csrc/cuda/soft_topk_cuda.cu) solve each row with the very same functions. Rows may be stored
// as float or double (template S); all arithmetic is float64.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#ifdef __CUDACC__
#define SP_HD __host__ __device__
#else
#define SP_HD
#endif

namespace smoothprune {

// Keys (x or |x|) are stored in float64 for float64 inputs, in float32 otherwise.
template <typename scalar_t>
using KeyFloat = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;

enum class PKind { kTwo, kFourThirds, kGeneral };

struct TopkParams {
  double lam;
  double p;
  double q;       // p / (p - 1)
  double lam_q1;  // lam^(q-1)
  PKind kind;
  bool magnitude;
  bool debias;

  SP_HD static TopkParams make(double lam, double p, bool magnitude, bool debias) {
    TopkParams P;
    P.lam = lam;
    P.p = p;
    P.q = p / (p - 1.0);
    P.lam_q1 = ::pow(lam, P.q - 1.0);
    if (::fabs(p - 2.0) < 1e-12) {
      P.kind = PKind::kTwo;
    } else if (::fabs(p - 4.0 / 3.0) < 1e-12) {
      P.kind = PKind::kFourThirds;
    } else {
      P.kind = PKind::kGeneral;
    }
    P.magnitude = magnitude;
    P.debias = debias;
    return P;
  }
};

// The pooled block [a, b) of a solved row (empty when a == b) and its value gamma.
struct BoundaryBlock {
  int64_t a;
  int64_t b;
  double gamma;
};

SP_HD inline double signed_pow(double z, double e) {
  return z >= 0 ? ::pow(z, e) : -::pow(-z, e);
}

// Output-side map y = psi(z) = sign(z) (|z| / lam)^(q-1).
SP_HD inline double psi(double z, const TopkParams& P) {
  switch (P.kind) {
    case PKind::kTwo:
      return z / P.lam;
    case PKind::kFourThirds: {
      const double r = z / P.lam;
      return r * r * r;
    }
    default:
      return signed_pow(z / P.lam, P.q - 1.0);
  }
}

// Slope c = (q-1)|z|^(q-2) of psi~ at z (DESIGN section 2, Jacobian). For p > 2 (q < 2) the
// slope is infinite at z = 0; |z| is floored at 1e-12 lam, far below any float32 resolution of y.
SP_HD inline double psi_slope(double z, const TopkParams& P) {
  switch (P.kind) {
    case PKind::kTwo:
      return 1.0;
    case PKind::kFourThirds:
      return 3.0 * z * z;
    default: {
      double az = ::fabs(z);
      if (P.q < 2.0) az = std::max(az, 1e-12 * P.lam);
      return (P.q - 1.0) * ::pow(az, P.q - 2.0);
    }
  }
}

// psi~(z) = sign(z)|z|^(q-1), the summand of a block equation, and its slope in z.
SP_HD inline void psi_tilde(double z, const TopkParams& P, double* value, double* slope) {
  if (P.kind == PKind::kTwo) {
    *value = z;
    *slope = 1.0;
  } else if (P.kind == PKind::kFourThirds) {
    *value = z * z * z;
    *slope = 3.0 * z * z;
  } else {
    const double az = ::fabs(z);
    *value = signed_pow(z, P.q - 1.0);
    *slope = (P.q - 1.0) * (az > 0 ? ::pow(az, P.q - 2.0) : (P.q < 2 ? INFINITY : 0.0));
  }
}

// Real root of u^3 + P u + Q = 0 with P >= 0 (the only real root). Rescaled so that no power
// overflows, and written as -Q / (A^2 + P/3 + B^2) (= A - B of Cardano's formula, without the
// cancellation when |Q| << P^(3/2)).
SP_HD inline double depressed_cubic_root(double Pc, double Qc) {
  const double scale = std::max(::sqrt(Pc), ::cbrt(::fabs(Qc)));
  if (!(scale > 0)) return 0.0;
  const double P = Pc / (scale * scale);
  const double Q = Qc / (scale * scale * scale);
  const double D = ::sqrt(0.25 * Q * Q + P * P * P / 27.0);
  const double A = ::cbrt(0.5 * ::fabs(Q) + D);
  const double B = P / (3.0 * A);
  return scale * (-Q / (A * A + P / 3.0 + B * B));
}

// Safeguarded Newton for a decreasing f on [lo, hi] with f(lo) >= 0 >= f(hi).
// `f(x, &df)` returns f(x) and stores f'(x). Falls back to bisection whenever the Newton step
// leaves the bracket or the derivative is not usable.
template <typename F>
SP_HD double solve_decreasing(F&& f, double lo, double hi, double x) {
  constexpr double kEps = 2.220446049250313e-16;  // float64 machine epsilon
  if (!(x >= lo && x <= hi)) x = 0.5 * (lo + hi);
  for (int it = 0; it < 300; ++it) {
    double df = 0.0;
    const double fx = f(x, &df);
    if (fx == 0.0) return x;
    if (fx > 0) lo = x; else hi = x;
    // A zero, infinite or NaN derivative gives no usable Newton step: bisect instead.
    double next = ((df - df == 0.0) && df < 0) ? x - fx / df : 0.5 * (lo + hi);
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
    const double tol = 2.0 * kEps * std::max(::fabs(next), ::fabs(x)) + 1e-300;
    if (::fabs(next - x) <= tol || hi - lo <= tol) return next;
    x = next;
  }
  return x;
}

// Magnitude singleton with w = 1: v solves s = v + lam * v^(p-1); also returns z = s - v.
SP_HD inline double kept_value(double s, const TopkParams& P, double* z_out) {
  double v;
  if (s <= 0) {
    v = 0.0;
  } else if (P.kind == PKind::kTwo) {
    v = s / (1.0 + P.lam);
  } else if (P.kind == PKind::kFourThirds) {
    // r = v^(1/3) solves r^3 + lam r - s = 0.
    const double r = depressed_cubic_root(P.lam, -s);
    v = r * r * r;
    if (z_out) *z_out = P.lam * r;
    return v;
  } else {
    const double pm1 = P.p - 1.0;
    auto f = [&](double v_, double* df) {
      const double pw = ::pow(v_, pm1);
      *df = -1.0 - P.lam * pm1 * (v_ > 0 ? pw / v_ : INFINITY);
      return s - v_ - P.lam * pw;
    };
    v = solve_decreasing(f, 0.0, s, s / (1.0 + P.lam * ::pow(s, P.p - 2.0)));
  }
  if (z_out) *z_out = s - v;
  return v;
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

// Output of a member (input xj, key s) of the pooled block of value gamma. Exact outputs are
// >= 0 in key space (the mask lies in [0, 1], the magnitude keeps sign(x)); a member whose key
// rounds below gamma would give a tiny negative: clamp it to 0.
template <typename scalar_t>
SP_HD inline scalar_t block_output(scalar_t xj, double s, double gamma, const TopkParams& P) {
  const double z = s - gamma;
  double out = std::max(psi(z, P) + ((P.magnitude && P.debias) ? z : 0.0), 0.0);
  if (P.magnitude && out != 0.0 && static_cast<double>(xj) < 0) out = -out;
  return static_cast<scalar_t>(out);
}

// Exact value of the fixed block [a, b) (k splits it into w = 1 and w = 0 parts).
template <typename S>
SP_HD inline double block_value(const S* s, int64_t a, int64_t b, int64_t k, const TopkParams& P) {
  const double m = static_cast<double>(b - a);
  const double W = static_cast<double>(std::min(b, k) - a);
  if (P.kind == PKind::kTwo) {
    double sum = 0.0;
    for (int64_t i = a; i < b; ++i) sum += s[i];
    return P.magnitude ? sum / (m + P.lam * W) : (sum - P.lam * W) / m;
  }
  auto block_equation = [&](double g, double* df) {
    double f = 0.0, d = 0.0;
    for (int64_t i = a; i < b; ++i) {
      double value, slope;
      psi_tilde(s[i] - g, P, &value, &slope);
      f += value;
      d += slope;
    }
    f -= P.lam_q1 * W * (P.magnitude ? g : 1.0);
    *df = -d - (P.magnitude ? P.lam_q1 * W : 0.0);
    return f;
  };
  const double smax = s[a], smin = s[b - 1];  // s is sorted in descending order
  const double lo = P.magnitude ? 0.0 : smin - P.lam;
  const double hi = smax;
  if (P.kind == PKind::kFourThirds) {
    // Closed form from central moments (two passes: mean, then moments), then Newton polish.
    double mu = 0.0;
    for (int64_t i = a; i < b; ++i) mu += s[i];
    mu /= m;
    double M2 = 0.0, M3 = 0.0;
    for (int64_t i = a; i < b; ++i) {
      const double d = s[i] - mu;
      M2 += d * d;
      M3 += d * d * d;
    }
    const double l3W = P.lam_q1 * W;  // lam^3 W
    // sum (d_i - u)^3 = M3 - 3 u M2 - m u^3 = lam^3 W (mask) or lam^3 W (mu + u) (magnitude).
    const double u = P.magnitude
                         ? depressed_cubic_root((3.0 * M2 + l3W) / m, (l3W * mu - M3) / m)
                         : depressed_cubic_root(3.0 * M2 / m, (l3W - M3) / m);
    return solve_decreasing(block_equation, lo, hi, mu + u);
  }
  return solve_decreasing(block_equation, lo, hi, 0.5 * (lo + hi));
}

// Grows the boundary block outwards from the junction with O(1) updates (p = 2 and p = 4/3):
// running sums shifted by a reference near the junction keep the merge decisions accurate.
template <typename S>
SP_HD inline void grow_block_closed_form(const S* s, int64_t n, int64_t k, const TopkParams& P,
                                   int64_t* a_out, int64_t* b_out) {
  const double c = s[k - 1];
  double m = 0, W = 0, S1 = 0, S2 = 0, S3 = 0;
  auto add = [&](int64_t i) {
    const double d = s[i] - c;
    m += 1;
    W += (i < k) ? 1.0 : 0.0;
    S1 += d;
    S2 += d * d;
    S3 += d * d * d;
  };
  auto value = [&]() {
    if (P.kind == PKind::kTwo) {
      return P.magnitude ? (c * m + S1) / (m + P.lam * W) : c + (S1 - P.lam * W) / m;
    }
    const double mu = S1 / m;
    const double M2 = std::max(S2 - S1 * mu, 0.0);
    const double M3 = S3 - 3.0 * mu * S2 + 2.0 * mu * mu * S1;
    const double l3W = P.lam_q1 * W;
    const double u = P.magnitude
                         ? depressed_cubic_root((3.0 * M2 + l3W) / m, (l3W * (c + mu) - M3) / m)
                         : depressed_cubic_root(3.0 * M2 / m, (l3W - M3) / m);
    return c + mu + u;
  };
  int64_t a = k - 1, b = k + 1;
  add(k - 1);
  add(k);
  double gamma = value();
  for (;;) {
    if (a > 0 && singleton_value(s[a - 1], true, P) < gamma) {
      add(--a);
    } else if (b < n && s[b] > gamma) {
      add(b++);
    } else {
      break;
    }
    gamma = value();
  }
  *a_out = a;
  *b_out = b;
}

// Any p: the block value is the root of the decreasing function
//   Phi(g) = sum_{i<k} min(F_i(g), 0) + sum_{i>=k} max(F_i(g), 0),
// F_i the singleton block equation. Membership for a given g is read off by binary search:
// i < k joins iff val_i < g  <=>  s_i < g + lam g^(p-1) (magnitude) or g + lam (mask);
// i >= k joins iff s_i > g. Cost: O(block) per evaluation instead of O(block) per merge.
// First i in [lo, hi) of the descending row s with s_i < t (or s_i <= t when or_equal).
template <typename S>
SP_HD inline int64_t first_below(const S* s, int64_t lo, int64_t hi, double t, bool or_equal) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const double v = s[mid];
    if (v < t || (or_equal && v == t)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// The key below which a kept singleton's value falls under g (it then joins a block of value g):
// g + lam g^(p-1) for the magnitude, g + lam for the mask. Non-decreasing in g.
SP_HD inline double kept_threshold(double g, const TopkParams& P) {
  return P.magnitude ? g + P.lam * ::pow(std::max(g, 0.0), P.p - 1.0) : g + P.lam;
}

template <typename S>
SP_HD inline void find_block_general(const S* s, int64_t n, int64_t k, const TopkParams& P,
                               int64_t* a_out, int64_t* b_out) {
  auto membership = [&](double g, int64_t* a, int64_t* b) {
    // s is descending: first i in [0, k) with s_i < th, and first i in [k, n) with s_i <= g.
    *a = first_below(s, 0, k, kept_threshold(g, P), false);
    *b = first_below(s, k, n, g, true);
  };
  auto phi = [&](double g, double* df) {
    int64_t a, b;
    membership(g, &a, &b);
    double f = 0.0, d = 0.0;
    for (int64_t i = a; i < b; ++i) {
      double value, slope;
      psi_tilde(s[i] - g, P, &value, &slope);
      f += value;
      d += slope;
    }
    const double W = static_cast<double>(k - a);
    f -= P.lam_q1 * W * (P.magnitude ? g : 1.0);
    *df = -d - (P.magnitude ? P.lam_q1 * W : 0.0);
    return f;
  };
  const double lo = singleton_value(s[k - 1], true, P);
  const double hi = s[k];
  const double g = solve_decreasing(phi, lo, hi, 0.5 * (lo + hi));
  membership(g, a_out, b_out);
  // The root sits where membership is about to change; keep the block non-degenerate around k.
  *a_out = std::min(*a_out, k - 1);
  *b_out = std::max(*b_out, k + 1);
}

// Solves one sorted row: the boundary block and its value (a == b == k when nothing pools).
template <typename S>
SP_HD inline BoundaryBlock solve_sorted_row(const S* s, int64_t n, int64_t k, const TopkParams& P) {
  BoundaryBlock blk{k, k, NAN};
  if (k <= 0 || k >= n) return blk;
  // Strict violation only: ties between singletons are not pooled.
  if (!(singleton_value(s[k - 1], true, P) < s[k])) return blk;
  if (P.kind == PKind::kGeneral) {
    find_block_general(s, n, k, P, &blk.a, &blk.b);
  } else {
    grow_block_closed_form(s, n, k, P, &blk.a, &blk.b);
  }
  blk.gamma = block_value(s, blk.a, blk.b, k, P);
  return blk;
}

}  // namespace smoothprune
