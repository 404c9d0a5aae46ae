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
//   gamma  [rows]     f64    the pooled block's offset rel in the row's frame (pav.h, Frame):
//                            the frame is rebuilt from the junction key x[perm[k-1]].
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "pav.h"
#include "radix_sort.h"
#include "select.h"

namespace smoothprune {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

template <typename scalar_t>
using KeyInt = std::conditional_t<std::is_same<scalar_t, double>::value, uint64_t, uint32_t>;

// Scratch buffers of one thread, reused across rows and across calls: allocating (and page-
// faulting) fresh row-sized buffers on every call costs as much as the work on rows of a few
// thousand entries, and about as much as the work itself on a few million (measured: a 1×2.36M
// forward re-faulting its scratch took twice as long). Buffers only grow; after a call on rows
// longer than `keep` they are given back (release_if_large).
template <typename scalar_t>
struct RowScratch {
  std::vector<KeyFloat<scalar_t>> key;
  std::vector<int32_t> window;
  std::vector<double> s;  // sized when used: the window's length, or n for a full sort
  SelectWorkspace<KeyFloat<scalar_t>> select;
  SortWorkspace<KeyInt<scalar_t>> sort;

  void reserve(int64_t n) {
    if (static_cast<int64_t>(key.size()) >= n) return;
    key.resize(n);
    window.resize(n);
  }
  void release_if_large(int64_t n, int64_t keep) {
    if (n > keep) *this = RowScratch();
  }
};

// Runs f(c, begin, end) for the `parts` chunks [n*c/parts, n*(c+1)/parts) of [0, n): on torch's
// threads when there are several, inline otherwise.
template <typename F>
void for_each_chunk(int64_t n, int64_t parts, const F& f) {
  if (parts == 1) return f(int64_t(0), int64_t(0), n);
  at::parallel_for(0, parts, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) f(c, n * c / parts, n * (c + 1) / parts);
  });
}

template <typename scalar_t>
RowScratch<scalar_t>& thread_scratch() {
  thread_local RowScratch<scalar_t> scratch;
  return scratch;
}

// Solves one row at a time, reusing its scratch buffers across the rows of a thread.
//
// Selection instead of sorting (docs/design.md §3): t_k and t_{k+1}, the k-th and (k+1)-th
// largest keys, come from an O(n) selection (select.h). The pooled block's value lies in
// [val(t_k), t_{k+1}], so every key >= hi = val^{-1}(t_{k+1}) is a kept singleton and every
// key <= lo = val(t_k) a pruned singleton; only the window (lo, hi) is sorted and solved. If the
// block found in the window reaches a window edge and PAV would pool across it (possible only
// through rounding at the bounds) the row is solved again by a full sort.
//
// Either way `perm` is laid out as [kept singletons | pooled block (sorted) | pruned], which is
// all the backward needs.
template <typename scalar_t>
class RowSolver {
 public:
  // chunks > 1: the row's O(n) passes run on that many threads (one long row, few rows).
  RowSolver(int64_t n, int64_t k, const TopkParams& P, bool full_sort, RowScratch<scalar_t>& scratch,
            int64_t chunks = 1)
      : n_(n), k_(k), P_(P), full_sort_(full_sort), chunks_(chunks), key_(scratch.key),
        select_ws_(scratch.select), window_(scratch.window), s_(scratch.s), ws_(scratch.sort) {
    scratch.reserve(n);
  }

  void run(const scalar_t* x, scalar_t* y, int32_t* perm, int64_t* blocks, double* gamma) {
    Key mn, mx;
    const bool finite = P_.magnitude ? make_keys<true>(x, &mn, &mx) : make_keys<false>(x, &mn, &mx);
    if (!finite) {
      write_nan_row(y, perm);
      save_nan_row(blocks, gamma);
      return;
    }
    BoundaryBlock blk{k_, k_, 0.0, 0.0};
    if (k_ == 0 || k_ == n_) {
      for (int64_t i = 0; i < n_; ++i) perm[i] = static_cast<int32_t>(i);
    } else if (full_sort_ || !solve_by_selection(perm, mn, mx, &blk)) {
      solve_by_full_sort(perm, &blk);
    }
    save_block(blk, blocks, gamma);
    write_outputs(x, y, perm, blk);
  }

 private:
  using Key = KeyFloat<scalar_t>;

  // Runs f(c, begin, end) for every chunk of the row.
  template <typename F>
  void for_each_row_chunk(const F& f) const {
    for_each_chunk(n_, chunks_, f);
  }

  // One pass: the keys (x, or |x| for the magnitude), their range (for the selection) and
  // whether the row is finite. The range is reduced over the keys' ordered_bits with the top bit
  // flipped, as signed integers: integer min/max reductions vectorize, floating ones do not
  // (without -ffast-math, which we never use), and x86 compares signed integers in vector
  // registers, unsigned ones only through extra steps (~25% on 25k entries, measured).
  template <bool kMagnitude>
  bool make_keys(const scalar_t* x, Key* mn, Key* mx) {
    using U = OrderedUint<Key>;
    using Bits = std::make_signed_t<U>;
    constexpr U kSign = ordered_sign_bit<Key>();
    constexpr Bits kAbs = std::numeric_limits<Bits>::max();  // every bit but the sign
    const Bits kInf = std::bit_cast<Bits>(std::numeric_limits<Key>::infinity());
    auto rank = [](Key k) { return static_cast<Bits>(ordered_bits(k) ^ kSign); };
    struct Range {
      Bits lo = std::numeric_limits<Bits>::max(), hi = std::numeric_limits<Bits>::min(), abs_max = 0;
    };
    c10::SmallVector<Range, 16> ranges(chunks_);  // (no heap allocation per row)
    Key* key = key_.data();
    for_each_row_chunk([&](int64_t c, int64_t begin, int64_t end) {
      Bits lo = std::numeric_limits<Bits>::max(), hi = std::numeric_limits<Bits>::min(), abs_max = 0;
      for (int64_t i = begin; i < end; ++i) {
        const Key v = static_cast<Key>(x[i]);
        const Key k = kMagnitude ? std::abs(v) : v + Key(0);  // `+ 0` maps -0.0 to +0.0
        key[i] = k;
        abs_max = std::max(abs_max, static_cast<Bits>(std::bit_cast<Bits>(k) & kAbs));
        lo = std::min(lo, rank(k));
        hi = std::max(hi, rank(k));
      }
      ranges[c] = {lo, hi, abs_max};
    });
    Range r;
    for (const Range& c : ranges) {
      r.lo = std::min(r.lo, c.lo);
      r.hi = std::max(r.hi, c.hi);
      r.abs_max = std::max(r.abs_max, c.abs_max);
    }
    *mn = from_ordered_bits<Key>(static_cast<U>(r.lo) ^ kSign);
    *mx = from_ordered_bits<Key>(static_cast<U>(r.hi) ^ kSign);
    return r.abs_max < kInf;  // Inf and NaN have every exponent bit set
  }

  void write_nan_row(scalar_t* y, int32_t* perm) const {
    for (int64_t i = 0; i < n_; ++i) {
      y[i] = static_cast<scalar_t>(kNaN);
      perm[i] = static_cast<int32_t>(i);
    }
  }

  // The smallest key >= v and the largest key <= v (rounding outwards from float64).
  static Key key_at_least(double v) {
    const Key r = static_cast<Key>(v);
    return static_cast<double>(r) < v ? std::nextafter(r, std::numeric_limits<Key>::infinity()) : r;
  }
  static Key key_at_most(double v) {
    const Key r = static_cast<Key>(v);
    return static_cast<double>(r) > v ? std::nextafter(r, -std::numeric_limits<Key>::infinity()) : r;
  }

  // val^{-1}: the key whose kept-singleton value is v: pav.h's kept_threshold, without its pow
  // for the p = 2 magnitude (called per row, on the hot path of short rows).
  double kept_inverse(double v) const {
    if (P_.magnitude && P_.kind == PKind::kTwo) return v * (1.0 + P_.lam);
    return kept_threshold(v, P_);
  }

  // What the selection knows before the window: perm filled as [kept singletons -> ... <- pruned
  // singletons] up to `front` and from `back`; cand[0..nc) the indices not settled yet, in index
  // order; every key > above was settled as kept, every key < below as pruned; t_k and t_{k+1}.
  struct Settled {
    int64_t front, back, nc;
    Key above, below, tk, tk1;
  };

  // Nothing settled: every index a candidate.
  Settled nothing_settled(int32_t* cand, Key tk, Key tk1) const {
    for (int64_t i = 0; i < n_; ++i) cand[i] = static_cast<int32_t>(i);
    const Key inf = std::numeric_limits<Key>::infinity();
    return {0, n_, n_, inf, -inf, tk, tk1};
  }

  // t_k and t_{k+1}, and what was settled on the way. False when the bucket shortcut cannot
  // help or rounding broke it: the caller sorts the row.
  bool select_pair(int32_t* perm, int32_t* cand, Key mn, Key mx, Settled* st) {
    if (few_ranks(n_, k_) || !(mn < mx)) {
      *st = select_directly(cand, mn, mx);
      return true;
    }
    const ValueBuckets<Key> vb(n_, mn, mx);
    return vb.usable() && select_by_buckets(perm, cand, vb, st);  // (unusable: a subnormal range)
  }

  // Small k or n - k, or all keys equal: t_k and t_{k+1} directly, nothing settled yet.
  Settled select_directly(int32_t* cand, Key mn, Key mx) {
    const KthPair<Key> pair = mn < mx ? select_few_ranks(key_.data(), n_, k_, select_ws_) : KthPair<Key>{mx, mx};
    return nothing_settled(cand, pair.tk, pair.tk1);
  }

  // A histogram locates the buckets of t_k and t_{k+1}; whatever their exact values, the window
  // (lo, hi) then lies within one bucket width of [val(lower edge of t_k's bucket),
  // val^{-1}(upper edge)]. The keys of the buckets beyond are settled by one compare each,
  // against the first or last key of a bucket, so that each chunk's share is known from its
  // histogram and chunks write their parts of perm in parallel; t_k and t_{k+1} come from the
  // candidates left. False when the shortcut cannot help (every key may be in the window) or
  // rounding broke it (pathological rows).
  bool select_by_buckets(int32_t* perm, int32_t* cand, const ValueBuckets<Key>& vb, Settled* out) {
    const uint32_t* total = bucket_counts(vb);
    BucketBounds bb;
    if (!bucket_bounds(vb, locate_ranks(total, vb.nb, k_), &bb)) return false;
    c10::SmallVector<int64_t, 48> offsets(3 * chunks_);
    Settled st = chunk_offsets(vb.nb, bb, offsets);
    settle_by_bounds(perm, cand, offsets, bb.above, bb.below);
    // t_k has rank k - front among the candidates iff above >= t_k (otherwise >= k keys would
    // be above), and t_{k+1} is a candidate iff below <= t_{k+1}: with both, both are exact.
    const int64_t rank = k_ - st.front;
    if (rank < 1 || rank >= st.nc) return false;
    const KthPair<Key> pair = select_among_candidates(cand, st.nc, rank);
    st.tk = pair.tk;
    st.tk1 = pair.tk1;
    *out = st;
    return true;
  }

  // Each chunk's histogram over vb's buckets (chunk c's counts at select_ws_.hist[c * 4 * nb]),
  // and their total (returned, nb counts).
  const uint32_t* bucket_counts(const ValueBuckets<Key>& vb) {
    const int64_t nb = vb.nb;
    std::vector<uint32_t>& hist = select_ws_.hist;  // per chunk: 4 * nb counters, the first nb its counts
    hist.resize(chunks_ * 4 * nb + nb);
    uint32_t* total = hist.data() + chunks_ * 4 * nb;
    for_each_row_chunk([&](int64_t c, int64_t begin, int64_t end) {
      bucket_histogram(key_.data() + begin, end - begin, vb, hist.data() + c * 4 * nb);
    });
    std::fill(total, total + nb, 0u);
    for (int64_t c = 0; c < chunks_; ++c) {
      for (int64_t b = 0; b < nb; ++b) total[b] += hist[c * 4 * nb + b];
    }
    return total;
  }

  // The keys settled before t_k is known: keys > above (the buckets above b_hi) are kept
  // singletons, keys < below (the buckets below b_lo) pruned ones.
  struct BucketBounds {
    int64_t b_hi, b_lo;
    Key above, below;
  };

  // BucketBounds from the buckets of t_k and t_{k+1}; false when no key can be settled (large lam).
  bool bucket_bounds(const ValueBuckets<Key>& vb, const RankBuckets& r, BucketBounds* out) const {
    const Key mn = vb.mn, mx = vb.mx;
    const Key above_hint = key_at_least(kept_inverse(vb.upper_edge(r.bk)) + vb.width());
    const Key below_hint =
        key_at_most(std::min(singleton_value(vb.lower_edge(r.bk), true, P_), vb.lower_edge(r.bk1)) - vb.width());
    if (!(above_hint < mx || below_hint > mn)) return false;
    const int64_t b_hi = vb(std::clamp(above_hint, mn, mx)), b_lo = vb(std::clamp(below_hint, mn, mx));
    *out = {b_hi, b_lo, vb.last_at_most(b_hi), vb.first_at_least(b_lo)};
    return true;
  }

  // Where each chunk writes: its settled keys after the earlier chunks', its candidates too
  // (offsets, per chunk: front, back, first candidate). Returns what gets settled, but t_k and
  // t_{k+1}.
  Settled chunk_offsets(int64_t nb, const BucketBounds& bb, c10::SmallVectorImpl<int64_t>& offsets) const {
    int64_t front = 0, back = n_, nc = 0;
    for (int64_t c = 0; c < chunks_; ++c) {
      const uint32_t* h = select_ws_.hist.data() + c * 4 * nb;
      int64_t n_above = 0, n_below = 0;
      for (int64_t b = bb.b_hi + 1; b < nb; ++b) n_above += h[b];
      for (int64_t b = 0; b < bb.b_lo; ++b) n_below += h[b];
      offsets[3 * c] = front;
      offsets[3 * c + 1] = back;
      offsets[3 * c + 2] = nc;
      front += n_above;
      back -= n_below;
      nc += (n_ * (c + 1) / chunks_ - n_ * c / chunks_) - n_above - n_below;  // the chunk's size
    }
    return {front, back, nc, bb.above, bb.below, Key(0), Key(0)};  // (t_k, t_{k+1}: not known yet)
  }

  // Keys > above to the front of perm, keys < below to its back, the rest to cand: each chunk
  // from its offsets, in index order.
  void settle_by_bounds(int32_t* perm, int32_t* cand, const c10::SmallVectorImpl<int64_t>& offsets, Key above,
                        Key below) {
    const Key* key = key_.data();
    for_each_row_chunk([&](int64_t c, int64_t begin, int64_t end) {
      int64_t f = offsets[3 * c], bk = offsets[3 * c + 1], m = offsets[3 * c + 2];
      for (int64_t i = begin; i < end; ++i) {
        const Key v = key[i];
        if (v > above) {
          perm[f++] = static_cast<int32_t>(i);
        } else if (v < below) {
          perm[--bk] = static_cast<int32_t>(i);
        } else {
          cand[m++] = static_cast<int32_t>(i);
        }
      }
    });
  }

  // t_k and t_{k+1} among the candidates cand[0, nc), t_k having rank `rank` (from 1) there.
  KthPair<Key> select_among_candidates(const int32_t* cand, int64_t nc, int64_t rank) {
    std::vector<Key>& ck = select_ws_.cand;
    ck.resize(nc);
    for (int64_t c = 0; c < nc; ++c) ck[c] = key_[cand[c]];
    std::nth_element(ck.begin(), ck.begin() + (rank - 1), ck.end(), std::greater<Key>());
    return {ck[rank - 1], *std::max_element(ck.begin() + rank, ck.end())};
  }

  // mn and mx: the row's smallest and largest key.
  bool solve_by_selection(int32_t* perm, Key mn, Key mx, BoundaryBlock* blk) {
    int32_t* cand = window_.data();
    Settled st;
    if (!select_pair(perm, cand, mn, mx, &st)) return false;
    const double lo = singleton_value(static_cast<double>(st.tk), true, P_);
    const double hi = kept_inverse(static_cast<double>(st.tk1));
    if (!junction_pools_at(st, lo)) {
      settle_hard_topk(perm, cand, st);
      return true;
    }
    if (!(static_cast<double>(st.above) >= hi && static_cast<double>(st.below) <= lo)) {
      // The settled keys may reach into the window (only on rows whose buckets are a few
      // roundings wide): settle again, by the exact bounds.
      st = nothing_settled(cand, st.tk, st.tk1);
    }
    const Window w = split_window(perm, cand, st, lo, hi);
    const int64_t k_local = k_ - w.n_above;
    if (k_local < 1 || k_local >= w.m) return false;
    sort_descending(w.m, [cand](int64_t i) { return cand[i]; }, perm + w.n_above);
    const Frame F = make_frame(s_[k_local - 1], P_);
    const BoundaryBlock local = solve_framed(w.m, k_local, F);
    if (!block_is_final(perm, st, w, local, F, mn, mx)) return false;
    *blk = {w.n_above + local.a, w.n_above + local.b, local.gamma, local.rel};
    return true;
  }

  // Whether the junction pools, given t_k, t_{k+1} and lo = val(t_k). Exact ties at the junction
  // pool whatever lam (see pav.h's junction_pools), also where lam is below the keys' rounding.
  bool junction_pools_at(const Settled& st, double lo) const {
    return lo < static_cast<double>(st.tk1) || (st.tk == st.tk1 && (!P_.magnitude || st.tk > 0));
  }

  // Nothing pools: the hard top-k, ties at t_k taken in index order (as a stable sort does).
  // Keys settled above are > t_k, keys settled below < t_{k+1} <= t_k (see select_by_buckets).
  void settle_hard_topk(int32_t* perm, const int32_t* cand, const Settled& st) const {
    int64_t front = st.front, back = st.back;
    int64_t need = k_ - front;
    for (int64_t c = 0; c < st.nc; ++c) need -= key_[cand[c]] > st.tk;
    for (int64_t c = 0; c < st.nc; ++c) {
      const Key v = key_[cand[c]];
      const bool kept = v > st.tk || (v == st.tk && need-- > 0);
      perm[kept ? front++ : --back] = cand[c];
    }
  }

  // The window (lo, hi) among the candidates, compacted into cand[0, m); the candidates above it
  // join the kept singletons in perm, those below the pruned ones.
  struct Window {
    int64_t n_above, n_below;     // all kept and pruned singletons
    int64_t m;                    // the window's size
    double above_min, below_max;  // the nearest candidates outside the window
  };

  Window split_window(int32_t* perm, int32_t* cand, const Settled& st, double lo, double hi) const {
    int64_t front = st.front, back = st.back, m = 0;
    double above_min = INFINITY, below_max = -INFINITY;
    for (int64_t c = 0; c < st.nc; ++c) {
      const int32_t j = cand[c];
      const double v = static_cast<double>(key_[j]);
      if (v >= hi) {
        perm[front++] = j;
        above_min = std::min(above_min, v);
      } else if (v <= lo) {
        perm[--back] = j;
        below_max = std::max(below_max, v);
      } else {
        cand[m++] = j;  // (m <= c)
      }
    }
    return {front, n_ - back, m, above_min, below_max};
  }

  // A block reaching a window edge is final iff PAV would not pool across that edge: the
  // nearest kept singleton above keeps a value >= gamma, the nearest pruned one below a key
  // <= gamma (true by the window's construction). Demand a margin far above rounding (1e-9
  // of the row's scale): within it, the full sort settles the tie exactly as a whole-row PAV
  // does, so the selection never changes a result by even one bit.
  bool block_is_final(const int32_t* perm, const Settled& st, const Window& w, const BoundaryBlock& local,
                      const Frame& F, Key mn, Key mx) const {
    const double g = local.a < local.b ? F.c + F.unit * local.rel : NAN;
    const double margin = 1e-9 * std::max(std::abs(static_cast<double>(mn)), std::abs(static_cast<double>(mx)));
    auto stays_kept = [&](double v) { return singleton_value(v, true, P_) >= g + margin; };
    auto stays_pruned = [&](double v) { return v <= g - margin; };
    auto lower = [](double u, double v) { return std::min(u, v); };
    auto higher = [](double u, double v) { return std::max(u, v); };
    if (local.a == 0 && w.n_above > 0 &&
        !edge_is_clear(perm, 0, st.front, st.above, w.above_min, INFINITY, stays_kept, lower)) {
      return false;
    }
    if (local.b == w.m && w.n_below > 0 &&
        !edge_is_clear(perm, st.back, n_, st.below, w.below_max, -INFINITY, stays_pruned, higher)) {
      return false;
    }
    return true;
  }

  // Whether `clear` holds for the nearest key beyond one window edge: the nearer (`nearer`) of the
  // nearest candidate there and the nearest key settled on that side, perm[first, last). Those
  // all lie beyond `settled_bound`, and are visited only when that bound is not clear itself.
  template <typename Clear, typename Nearer>
  bool edge_is_clear(const int32_t* perm, int64_t first, int64_t last, Key settled_bound, double nearest_candidate,
                     double none, const Clear& clear, const Nearer& nearer) const {
    double nearest = nearest_candidate;
    if (first < last) {
      double bound = static_cast<double>(settled_bound);
      if (!clear(bound)) {
        bound = none;
        for (int64_t i = first; i < last; ++i) bound = nearer(bound, static_cast<double>(key_[perm[i]]));
      }
      nearest = nearer(nearest, bound);
    }
    return clear(nearest);
  }

  void solve_by_full_sort(int32_t* perm, BoundaryBlock* blk) {
    sort_descending(n_, [](int64_t i) { return static_cast<int32_t>(i); }, perm);
    *blk = k_ > 0 && k_ < n_ ? solve_framed(n_, k_, make_frame(s_[k_ - 1], P_)) : BoundaryBlock{k_, k_, 0.0, 0.0};
  }

  // Sorts the keys of the indices index(0..m) descending (stable in i): the indices into
  // out[0, m), the keys into s_[0, m).
  template <typename Index>
  void sort_descending(int64_t m, const Index& index, int32_t* out) {
    ws_.resize(m);
    if (static_cast<int64_t>(s_.size()) < m) s_.resize(m);
    for (int64_t i = 0; i < m; ++i) ws_.keys[i] = descending_key(key_[index(i)]);
    sort_keys_with_index(ws_, m);
    for (int64_t i = 0; i < m; ++i) {
      const int32_t j = index(ws_.idx[i]);
      out[i] = j;
      s_[i] = static_cast<double>(key_[j]);
    }
  }

  // Solves the sorted keys s_[0, m) in frame F (their differences from the junction key replace
  // them in s_).
  BoundaryBlock solve_framed(int64_t m, int64_t k, const Frame& F) {
    double* s = s_.data();
    for (int64_t i = 0; i < m; ++i) s[i] = F.diff(s[i]);
    return solve_sorted_diffs([s](int64_t i) { return s[i]; }, m, k, F.cf, F.P);
  }

  void write_outputs(const scalar_t* x, scalar_t* y, const int32_t* perm, const BoundaryBlock& blk) {
    // Pruned singletons (most of a pruned row): one contiguous fill instead of scattered writes.
    for_each_row_chunk([&](int64_t, int64_t begin, int64_t end) { std::fill(y + begin, y + end, scalar_t(0)); });
    for_each_chunk(blk.a, chunks_, [&](int64_t, int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {  // kept singletons
        const int32_t j = perm[i];
        y[j] = kept_output(x[j], static_cast<double>(key_[j]), P_);
      }
    });
    if (blk.a < blk.b) write_block_outputs(x, y, perm, blk);
  }

  void write_block_outputs(const scalar_t* x, scalar_t* y, const int32_t* perm, const BoundaryBlock& blk) {
    const Frame F = make_frame(static_cast<double>(key_[perm[k_ - 1]]), P_);
    for (int64_t i = blk.a; i < blk.b; ++i) {
      const int32_t j = perm[i];
      y[j] = framed_block_output(x[j], static_cast<double>(key_[j]), blk.rel, F);
    }
    if (!P_.magnitude && F.P.q < 2.0) {  // p > 2: see pav.h's mask_remainder
      double rest = 0.0;
      for (int64_t i = blk.a; i + 1 < blk.b; ++i) rest += static_cast<double>(y[perm[i]]);
      y[perm[blk.b - 1]] = static_cast<scalar_t>(mask_remainder(k_, blk.a, rest));
    }
  }

  const int64_t n_, k_;
  const TopkParams P_;
  const bool full_sort_;
  const int64_t chunks_;
  std::vector<Key>& key_;
  SelectWorkspace<Key>& select_ws_;
  std::vector<int32_t>& window_;
  std::vector<double>& s_;
  SortWorkspace<KeyInt<scalar_t>>& ws_;
};

// Fewer rows than threads (a whole weight matrix as one row, global scope): each long row is
// split into chunks of at least kMinChunk entries whose O(n) passes run on separate threads.
constexpr int64_t kMinChunk = int64_t(1) << 13;

// Scratch kept between calls: rows up to 2^18 entries on every thread; rows up to 2^23 (a
// global-scope row of a mid-sized model, pruned at every step) when only the calling thread
// holds scratch (it solves the rows in chunks, or torch runs one thread): at most ~80 MB.
constexpr int64_t kKeepPerThread = int64_t(1) << 18;
constexpr int64_t kKeepOneRow = int64_t(1) << 23;

inline int64_t chunks_per_row(int64_t rows, int64_t n) {
  const int64_t threads = at::get_num_threads();
  if (rows >= threads || at::in_parallel_region()) return 1;
  return std::clamp<int64_t>(n / kMinChunk, 1, threads);
}

// Runs solve(begin, end, chunks, alone) over the rows: with fewer rows than threads, one row
// after another, each split in `chunks` (chunks_per_row); otherwise rows in parallel, one thread
// each. `alone`: only the calling thread solves rows (it may keep larger scratch).
template <typename F>
void for_rows(int64_t rows, int64_t n, const F& solve) {
  const int64_t chunks = chunks_per_row(rows, n);
  if (chunks > 1 || at::get_num_threads() == 1) return solve(int64_t(0), rows, chunks, true);
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { solve(begin, end, int64_t(1), false); });
}

template <typename scalar_t>
void forward_rows(const scalar_t* x_all, scalar_t* y_all, int32_t* perm_all, int64_t* blocks_all,
                  double* gamma_all, int64_t rows, int64_t n, int64_t k, const TopkParams& P,
                  bool full_sort) {
  for_rows(rows, n, [&](int64_t begin, int64_t end, int64_t chunks, bool alone) {
    RowScratch<scalar_t>& scratch = thread_scratch<scalar_t>();
    {
      RowSolver<scalar_t> solver(n, k, P, full_sort, scratch, chunks);
      for (int64_t r = begin; r < end; ++r) {
        solver.run(x_all + r * n, y_all + r * n, perm_all + r * n, blocks_all + 2 * r, gamma_all + r);
      }
    }
    scratch.release_if_large(n, alone ? kKeepOneRow : kKeepPerThread);
  });
}

// Kept singletons, sorted positions [0, a): the mask is locally constant (zero gradient, left
// as filled), the magnitude passes kept_magnitude_sensitivity (pav.h). `key(i)`: the key at
// sorted position i.
template <typename scalar_t, typename KeyAt>
void kept_singleton_grads(const scalar_t* g, const int32_t* perm, int64_t a, const KeyAt& key, const TopkParams& P,
                          int64_t chunks, scalar_t* gx) {
  if (!P.magnitude) return;
  for_each_chunk(a, chunks, [&](int64_t, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int32_t j = perm[i];
      gx[j] = static_cast<scalar_t>(static_cast<double>(g[j]) * kept_magnitude_sensitivity(key(i), P));
    }
  });
}

// Pooled block, sorted positions [a, b), in the row's frame (the forward's offset `rel`): one
// pass for the block's sums, one for its members' gradients (pav.h, the closed-form backward).
template <typename scalar_t, typename KeyAt>
void block_grads(const scalar_t* g, const scalar_t* x, const int32_t* perm, int64_t a, int64_t b, double rel,
                 const KeyAt& key, int64_t k, const TopkParams& P, scalar_t* gx) {
  const Frame F = make_frame(key(k - 1), P);
  BlockGradSums t;
  for (int64_t i = a; i < b; ++i) {
    const int32_t j = perm[i];
    const double gt = static_cast<double>(g[j]) * grad_sign(static_cast<double>(x[j]), P);
    t.add(gt, block_member_slope(key(i), rel, F), i < k, P);
  }
  if (!(t.E > 0)) return;  // unreachable for a block holding kept elements; stay finite
  for (int64_t i = a; i < b; ++i) {
    const int32_t j = perm[i];
    const double sg = grad_sign(static_cast<double>(x[j]), P);
    const double gt = static_cast<double>(g[j]) * sg;
    gx[j] = static_cast<scalar_t>(block_member_grad(gt, sg, block_member_slope(key(i), rel, F), t, F, P));
  }
}

// The gradient of one row (see backward_rows); `chunks` threads share its O(n) passes.
template <typename scalar_t>
void backward_row(const scalar_t* g, const scalar_t* x, const int32_t* perm, int64_t a, int64_t b,
                  double rel, scalar_t* gx, int64_t n, int64_t k, const TopkParams& P, int64_t chunks) {
  auto fill = [&](scalar_t v) {
    for_each_chunk(n, chunks, [&](int64_t, int64_t i0, int64_t i1) { std::fill(gx + i0, gx + i1, v); });
  };
  if (a < 0) {  // the forward saw a NaN/Inf in this row (or k, lam were invalid)
    fill(static_cast<scalar_t>(kNaN));
    return;
  }
  fill(scalar_t(0));
  auto key = [&](int64_t i) { return key_of(static_cast<double>(x[perm[i]]), P); };
  kept_singleton_grads(g, perm, a, key, P, chunks, gx);
  if (a < b) block_grads(g, x, perm, a, b, rel, key, k, P, gx);
}

template <typename scalar_t>
void backward_rows(const scalar_t* g_all, const scalar_t* x_all, const int32_t* perm_all,
                   const int64_t* blocks_all, const double* gamma_all, scalar_t* gx_all,
                   int64_t rows, int64_t n, int64_t k, const TopkParams& P) {
  for_rows(rows, n, [&](int64_t begin, int64_t end, int64_t chunks, bool /*alone*/) {
    for (int64_t r = begin; r < end; ++r) {
      backward_row(g_all + r * n, x_all + r * n, perm_all + r * n, blocks_all[2 * r], blocks_all[2 * r + 1],
                   gamma_all[r], gx_all + r * n, n, k, P, chunks);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_topk_forward_cpu(
    const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, double p, bool magnitude,
    bool debias, bool full_sort) {
  const auto args = check_soft_topk_args("soft_topk_forward", x, k, lam, p);
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.size(-1);  // x has >= 1 dim (checked)
  const int64_t rows = n == 0 ? 0 : xc.numel() / n;
  const ForwardOutputs out = empty_forward_outputs(xc);
  const at::Tensor &y = out.y, &perm = out.perm, &blocks = out.blocks, &gamma = out.gamma;
  const TopkParams P = TopkParams::make(args.lam, p, magnitude, debias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "soft_topk_forward", [&] {
    forward_rows<scalar_t>(xc.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                           perm.mutable_data_ptr<int32_t>(), blocks.mutable_data_ptr<int64_t>(),
                           gamma.mutable_data_ptr<double>(), rows, n, args.k, P, full_sort);
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
  const int64_t n = xc.size(-1);  // x has >= 1 dim (checked)
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
