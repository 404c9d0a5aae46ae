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
// Selection instead of sorting (DESIGN.md section 2): t_k and t_{k+1}, the k-th and (k+1)-th
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
      for (int64_t i = 0; i < n_; ++i) {
        y[i] = static_cast<scalar_t>(kNaN);
        perm[i] = static_cast<int32_t>(i);
      }
      blocks[0] = blocks[1] = -1;
      *gamma = kNaN;
      return;
    }
    BoundaryBlock blk{k_, k_, 0.0, 0.0};
    if (k_ == 0 || k_ == n_) {
      for (int64_t i = 0; i < n_; ++i) perm[i] = static_cast<int32_t>(i);
    } else if (full_sort_ || !solve_by_selection(perm, mn, mx, &blk)) {
      solve_by_full_sort(perm, &blk);
    }
    blocks[0] = blk.a;
    blocks[1] = blk.b;
    *gamma = blk.a < blk.b ? blk.rel : 0.0;
    write_outputs(x, y, perm, blk);
  }

 private:
  using Key = KeyFloat<scalar_t>;

  // Runs f(c, begin, end) for every chunk of the row (smoothprune::for_each_chunk).
  template <typename F>
  void for_each_chunk(const F& f) const {
    smoothprune::for_each_chunk(n_, chunks_, f);
  }

  // One pass: the keys (x, or |x| for the magnitude), their range (for the selection) and
  // whether the row is finite. The range is reduced on the keys' IEEE bits mapped to integers of
  // the same order: integer min/max reductions vectorize, floating ones do not (without
  // -ffast-math, which we never use). Signed integers here, unlike select.h's OrderedBits: the
  // branch-free signed mapping keeps this pass ~25% faster on 25k entries (measured).
  template <bool kMagnitude>
  bool make_keys(const scalar_t* x, Key* mn, Key* mx) {
    using Bits = std::conditional_t<sizeof(Key) == 4, int32_t, int64_t>;
    constexpr Bits kAbs = std::numeric_limits<Bits>::max();  // every bit but the sign
    const Bits kInf = std::bit_cast<Bits>(std::numeric_limits<Key>::infinity());
    auto ordered = [](Bits b) { return b ^ ((b >> (8 * sizeof(Bits) - 1)) & kAbs); };  // an involution
    struct Range {
      Bits lo = std::numeric_limits<Bits>::max(), hi = std::numeric_limits<Bits>::min(), abs_max = 0;
    };
    c10::SmallVector<Range, 16> ranges(chunks_);  // (no heap allocation per row)
    Key* key = key_.data();
    for_each_chunk([&](int64_t c, int64_t begin, int64_t end) {
      Bits lo = std::numeric_limits<Bits>::max(), hi = std::numeric_limits<Bits>::min(), abs_max = 0;
      for (int64_t i = begin; i < end; ++i) {
        const Key v = static_cast<Key>(x[i]);
        const Key k = kMagnitude ? std::abs(v) : v + Key(0);  // `+ 0` maps -0.0 to +0.0
        key[i] = k;
        const Bits b = std::bit_cast<Bits>(k);
        abs_max = std::max(abs_max, static_cast<Bits>(b & kAbs));
        lo = std::min(lo, ordered(b));
        hi = std::max(hi, ordered(b));
      }
      ranges[c] = {lo, hi, abs_max};
    });
    Range r;
    for (const Range& c : ranges) {
      r.lo = std::min(r.lo, c.lo);
      r.hi = std::max(r.hi, c.hi);
      r.abs_max = std::max(r.abs_max, c.abs_max);
    }
    *mn = std::bit_cast<Key>(ordered(r.lo));
    *mx = std::bit_cast<Key>(ordered(r.hi));
    return r.abs_max < kInf;  // Inf and NaN have every exponent bit set
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
  // rounding broke it (pathological rows): the caller sorts the row.
  bool select_by_buckets(int32_t* perm, int32_t* cand, const ValueBuckets<Key>& vb, Settled* out) {
    const Key mn = vb.mn, mx = vb.mx;
    const int64_t nb = vb.nb;
    std::vector<uint32_t>& hist = select_ws_.hist;  // per chunk: 4 * nb counters, the first nb its counts
    hist.resize(chunks_ * 4 * nb + nb);
    uint32_t* total = hist.data() + chunks_ * 4 * nb;
    for_each_chunk([&](int64_t c, int64_t begin, int64_t end) {
      bucket_histogram(key_.data() + begin, end - begin, vb, hist.data() + c * 4 * nb);
    });
    std::fill(total, total + nb, 0u);
    for (int64_t c = 0; c < chunks_; ++c) {
      for (int64_t b = 0; b < nb; ++b) total[b] += hist[c * 4 * nb + b];
    }
    const RankBuckets r = locate_ranks(total, nb, k_);
    const Key above_hint = key_at_least(kept_inverse(vb.upper_edge(r.bk)) + vb.width());
    const Key below_hint =
        key_at_most(std::min(singleton_value(vb.lower_edge(r.bk), true, P_), vb.lower_edge(r.bk1)) - vb.width());
    if (!(above_hint < mx || below_hint > mn)) return false;  // every key may be in the window (large lam)
    const int64_t b_hi = vb(std::clamp(above_hint, mn, mx)), b_lo = vb(std::clamp(below_hint, mn, mx));
    const Key above = vb.last_at_most(b_hi);   // keys > above: the buckets above b_hi
    const Key below = vb.first_at_least(b_lo);  // keys < below: the buckets below b_lo
    // Where each chunk writes: its settled keys after the earlier chunks', its candidates too.
    int64_t front = 0, back = n_, nc = 0;
    c10::SmallVector<int64_t, 48> offsets(3 * chunks_);  // per chunk: front, back, first candidate
    for (int64_t c = 0; c < chunks_; ++c) {
      const uint32_t* h = hist.data() + c * 4 * nb;
      int64_t n_above = 0, n_below = 0;
      for (int64_t b = b_hi + 1; b < nb; ++b) n_above += h[b];
      for (int64_t b = 0; b < b_lo; ++b) n_below += h[b];
      offsets[3 * c] = front;
      offsets[3 * c + 1] = back;
      offsets[3 * c + 2] = nc;
      front += n_above;
      back -= n_below;
      nc += (n_ * (c + 1) / chunks_ - n_ * c / chunks_) - n_above - n_below;  // the chunk's size
    }
    const Key* key = key_.data();
    for_each_chunk([&](int64_t c, int64_t begin, int64_t end) {
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
    // t_k has rank k - front among the candidates iff above >= t_k (otherwise >= k keys would
    // be above), and t_{k+1} is a candidate iff below <= t_{k+1}: with both, both are exact.
    const int64_t rank = k_ - front;
    if (rank < 1 || rank >= nc) return false;
    std::vector<Key>& ck = select_ws_.cand;
    ck.resize(nc);
    for (int64_t c = 0; c < nc; ++c) ck[c] = key[cand[c]];
    std::nth_element(ck.begin(), ck.begin() + (rank - 1), ck.end(), std::greater<Key>());
    *out = {front, back, nc, above, below, ck[rank - 1], *std::max_element(ck.begin() + rank, ck.end())};
    return true;
  }

  // mn and mx: the row's smallest and largest key.
  bool solve_by_selection(int32_t* perm, Key mn, Key mx, BoundaryBlock* blk) {
    int32_t* cand = window_.data();
    Settled st;
    if (few_ranks(n_, k_) || !(mn < mx)) {
      st = select_directly(cand, mn, mx);
    } else {
      const ValueBuckets<Key> vb(n_, mn, mx);
      if (!vb.usable() || !select_by_buckets(perm, cand, vb, &st)) return false;  // (unusable: a subnormal range)
    }
    const Key tk = st.tk, tk1 = st.tk1;
    const double lo = singleton_value(static_cast<double>(tk), true, P_);
    const double hi = kept_inverse(static_cast<double>(tk1));
    // Exact ties at the junction pool whatever lam (see solve_sorted_diffs), also where lam is
    // below the keys' rounding.
    const bool pools = lo < static_cast<double>(tk1) || (tk == tk1 && (!P_.magnitude || tk > 0));
    if (pools && !(static_cast<double>(st.above) >= hi && static_cast<double>(st.below) <= lo)) {
      // The settled keys may reach into the window (only on rows whose buckets are a few
      // roundings wide): settle again, by the exact bounds.
      st = nothing_settled(cand, tk, tk1);
    }
    int64_t front = st.front, back = st.back;
    const int64_t nc = st.nc;
    const Key above = st.above, below = st.below;
    if (!pools) {
      // Nothing pools: the hard top-k, ties at t_k taken in index order (as a stable sort does).
      // Keys settled above are > t_k, keys settled below < t_{k+1} <= t_k (proven above).
      int64_t need = k_ - front;
      for (int64_t c = 0; c < nc; ++c) need -= key_[cand[c]] > tk;
      for (int64_t c = 0; c < nc; ++c) {
        const Key v = key_[cand[c]];
        const bool kept = v > tk || (v == tk && need-- > 0);
        perm[kept ? front++ : --back] = cand[c];
      }
      return true;
    }
    const int64_t settled_above = front, settled_below = n_ - back;
    int64_t m = 0;
    double above_min = INFINITY, below_max = -INFINITY;  // the window's outside neighbours
    for (int64_t c = 0; c < nc; ++c) {
      const int32_t j = cand[c];
      const double v = static_cast<double>(key_[j]);
      if (v >= hi) {
        perm[front++] = j;
        above_min = std::min(above_min, v);
      } else if (v <= lo) {
        perm[--back] = j;
        below_max = std::max(below_max, v);
      } else {
        cand[m++] = j;  // the window, compacted in place (m <= c)
      }
    }
    const int64_t n_above = front, n_below = n_ - back, k_local = k_ - n_above;
    if (k_local < 1 || k_local >= m) return false;
    ws_.resize(m);
    if (static_cast<int64_t>(s_.size()) < m) s_.resize(m);
    for (int64_t i = 0; i < m; ++i) ws_.keys[i] = descending_key(key_[cand[i]]);
    sort_keys_with_index(ws_, m);
    for (int64_t i = 0; i < m; ++i) {
      const int32_t j = cand[ws_.idx[i]];
      perm[n_above + i] = j;
      s_[i] = static_cast<double>(key_[j]);
    }
    const Frame F = make_frame(s_[k_local - 1], P_);
    const BoundaryBlock local = solve_framed(m, k_local, F);
    // A block reaching a window edge is final iff PAV would not pool across that edge: the
    // nearest kept singleton above keeps a value >= gamma, the nearest pruned one below a key
    // <= gamma (true by the window's construction). Demand a margin far above rounding (1e-9
    // of the row's scale): within it, the full sort settles the tie exactly as a whole-row PAV
    // does, so the selection never changes a result by even one bit.
    const double g = local.a < local.b ? F.c + F.unit * local.rel : NAN;
    const double margin = 1e-9 * std::max(std::abs(static_cast<double>(mn)), std::abs(static_cast<double>(mx)));
    if (local.a == 0 && n_above > 0) {
      if (settled_above > 0) {
        // The keys settled above are > `above`: visit them only if that bound is not enough.
        double bound = static_cast<double>(above);
        if (!(singleton_value(bound, true, P_) >= g + margin)) {
          bound = INFINITY;
          for (int64_t i = 0; i < settled_above; ++i) bound = std::min(bound, static_cast<double>(key_[perm[i]]));
        }
        above_min = std::min(above_min, bound);
      }
      if (!(singleton_value(above_min, true, P_) >= g + margin)) return false;
    }
    if (local.b == m && n_below > 0) {
      if (settled_below > 0) {
        // The keys settled below are < `below`: visit them only if that bound is not enough.
        double bound = static_cast<double>(below);
        if (!(bound <= g - margin)) {
          bound = -INFINITY;
          for (int64_t i = n_ - settled_below; i < n_; ++i) bound = std::max(bound, static_cast<double>(key_[perm[i]]));
        }
        below_max = std::max(below_max, bound);
      }
      if (!(below_max <= g - margin)) return false;
    }
    *blk = {n_above + local.a, n_above + local.b, local.gamma, local.rel};
    return true;
  }

  void solve_by_full_sort(int32_t* perm, BoundaryBlock* blk) {
    ws_.resize(n_);
    if (static_cast<int64_t>(s_.size()) < n_) s_.resize(n_);
    for (int64_t i = 0; i < n_; ++i) ws_.keys[i] = descending_key(key_[i]);
    sort_keys_with_index(ws_, n_);
    for (int64_t i = 0; i < n_; ++i) {
      perm[i] = ws_.idx[i];
      s_[i] = static_cast<double>(key_[ws_.idx[i]]);
    }
    *blk = k_ > 0 && k_ < n_ ? solve_framed(n_, k_, make_frame(s_[k_ - 1], P_)) : BoundaryBlock{k_, k_, 0.0, 0.0};
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
    for_each_chunk([&](int64_t, int64_t begin, int64_t end) { std::fill(y + begin, y + end, scalar_t(0)); });
    smoothprune::for_each_chunk(blk.a, chunks_, [&](int64_t, int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {  // kept singletons
        const int32_t j = perm[i];
        y[j] = kept_output(x[j], static_cast<double>(key_[j]), P_);
      }
    });
    if (blk.a >= blk.b) return;
    const Frame F = make_frame(static_cast<double>(key_[perm[k_ - 1]]), P_);
    for (int64_t i = blk.a; i < blk.b; ++i) {  // pooled boundary block
      const int32_t j = perm[i];
      y[j] = framed_block_output(x[j], static_cast<double>(key_[j]), blk.rel, F);
    }
    // For p > 2 the mask of the block's last member (the smallest key) is infinitely sensitive
    // to the offset near 0: one ulp of rel can move it by more than rounding. It takes the
    // remainder of the block's share k - a instead, so that the mask sums to k.
    if (!P_.magnitude && F.P.q < 2.0) {
      double rest = 0.0;
      for (int64_t i = blk.a; i + 1 < blk.b; ++i) rest += static_cast<double>(y[perm[i]]);
      y[perm[blk.b - 1]] = static_cast<scalar_t>(std::clamp(static_cast<double>(k_ - blk.a) - rest, 0.0, 1.0));
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

// The gradient of one row (see backward_rows); `chunks` threads share its O(n) passes.
template <typename scalar_t>
void backward_row(const scalar_t* g, const scalar_t* x, const int32_t* perm, int64_t a, int64_t b,
                  double rel, scalar_t* gx, int64_t n, int64_t k, const TopkParams& P, int64_t chunks) {
  if (a < 0) {  // the forward saw a NaN/Inf in this row (or k, lam were invalid)
    for_each_chunk(n, chunks, [&](int64_t, int64_t i0, int64_t i1) { std::fill(gx + i0, gx + i1, static_cast<scalar_t>(kNaN)); });
    return;
  }
  for_each_chunk(n, chunks, [&](int64_t, int64_t i0, int64_t i1) { std::fill(gx + i0, gx + i1, scalar_t(0)); });
  auto sorted_value = [&](int64_t i) {
    const double v = static_cast<double>(x[perm[i]]);
    return P.magnitude ? std::abs(v) : v;
  };
  auto sign_of = [&](int32_t j) {  // sign(x) with sign(0) = +1: y is odd in x
    return (P.magnitude && static_cast<double>(x[j]) < 0) ? -1.0 : 1.0;
  };
  // Kept singletons: the mask is locally constant (zero gradient); the magnitude has
  // dy/dx = e / (e + 1), e = psi'(z), raw, and exactly 1 de-biased (y = x there).
  if (P.magnitude) {
    for_each_chunk(a, chunks, [&](int64_t, int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int32_t j = perm[i];
        double sens = 1.0;
        if (!P.debias) {
          const double e = psi_deriv(kept_shrink(sorted_value(i), P), P);
          sens = e / (e + 1.0);
        }
        gx[j] = static_cast<scalar_t>(static_cast<double>(g[j]) * sens);
      }
    });
  }
  if (a >= b) return;
  // Pooled block, in the row's frame (the forward's offset `rel`): with e_i = psi'(z_i),
  //   grad_s_j = (e_j (g_j - Ge / E) + beta (g_j - e_j G / E)) / (lam for the mask, 1 else),
  // E = sum (e_i + w_i [magnitude]), Ge = sum g_i e_i, G = sum g_i (DESIGN section 2: the
  // Jacobian with c_i = lam^(q-1) e_i, divided through by lam^(q-1)).
  const Frame F = make_frame(sorted_value(k - 1), P);
  const double beta = (P.magnitude && P.debias) ? 1.0 : 0.0;
  auto slope = [&](int64_t i) { return psi_deriv(std::max(F.diff(sorted_value(i)) - rel, 0.0), F.P); };
  double E = 0.0, Ge = 0.0, G = 0.0;
  for (int64_t i = a; i < b; ++i) {
    const int32_t j = perm[i];
    const double gt = static_cast<double>(g[j]) * sign_of(j);
    const double e = slope(i);
    E += e + ((P.magnitude && i < k) ? 1.0 : 0.0);
    Ge += gt * e;
    G += gt;
  }
  if (!(E > 0)) return;  // unreachable for a block holding kept elements; stay finite
  const double scale = P.magnitude ? 1.0 : 1.0 / F.unit;
  for (int64_t i = a; i < b; ++i) {
    const int32_t j = perm[i];
    const double sg = sign_of(j);
    const double gt = static_cast<double>(g[j]) * sg;
    const double e = slope(i);
    const double grad_s = e * (gt - Ge / E) + beta * (gt - e * G / E);
    gx[j] = static_cast<scalar_t>(sg * grad_s * scale);
  }
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
