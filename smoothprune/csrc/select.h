// Selection of t_k and t_{k+1}, the k-th and (k+1)-th largest keys of a finite row (1 <= k < n),
// in O(n), for the selection-based forward (docs/design.md §3).
//
// - Small k (or small n - k): one pass keeping the k+1 largest (or the n-k+1 smallest) in a
//   sorted buffer; after a few entries almost every key is rejected by one predictable compare.
// - Otherwise: value-range buckets. Keys are spread over equal-width buckets between the row's
//   min and max (the bucket index is monotone in the key), a histogram locates the buckets
//   holding ranks k and k+1, and the caller settles every key of a bucket far from them without
//   ever knowing t_k exactly (soft_topk_cpu.cpp); t_k and t_{k+1} come from std::nth_element on
//   the few keys left. This replaces std::nth_element over the whole row, whose data-dependent
//   branches dominate on short rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "float_order.h"

namespace smoothprune {

template <typename Key>
struct SelectWorkspace {
  std::vector<uint32_t> hist;
  std::vector<Key> cand;
  std::vector<Key> buf;
};

template <typename Key>
struct KthPair {
  Key tk;   // k-th largest
  Key tk1;  // (k+1)-th largest
};

// Leaves in buf the `m` best keys of key[0..n), best first (`better`: std::greater keeps the
// largest, std::less the smallest).
template <typename Key, typename Better>
void keep_best(const Key* key, int64_t n, int64_t m, std::vector<Key>& buf, Better better) {
  buf.assign(key, key + m);
  std::sort(buf.begin(), buf.end(), better);
  Key* b = buf.data();
  for (int64_t i = m; i < n; ++i) {
    const Key v = key[i];
    if (!better(v, b[m - 1])) continue;  // the common case, well predicted
    int64_t j = m - 1;
    while (j > 0 && better(v, b[j - 1])) {
      b[j] = b[j - 1];
      --j;
    }
    b[j] = v;
  }
}

// Equal-width value-range buckets between a row's minimum and maximum key (mn < mx, both
// finite): about 4 keys per bucket, between 64 and 4096 buckets. The bucket index is monotone
// non-decreasing in the key, so a histogram locates the buckets of any rank, and a bucket's
// first and last key turn "the keys of the buckets above b" into "the keys > last_at_most(b)".
// Arithmetic is in the key type (float for every input but float64).
template <typename Key>
struct ValueBuckets {
  int64_t nb;
  Key mn, mx, scale;

  ValueBuckets(int64_t n, Key mn_, Key mx_)
      : nb(std::clamp<int64_t>(n / 4, 64, 4096)), mn(mn_), mx(mx_), scale(static_cast<Key>(nb) / (mx_ - mn_)) {}

  // false when the range is so narrow (subnormal) that the scale overflows
  bool usable() const { return scale - scale == Key(0); }

  int64_t operator()(Key v) const {  // v in [mn, mx]
    const int64_t b = static_cast<int64_t>((v - mn) * scale);
    return b < nb ? b : nb - 1;
  }
  double width() const { return 1.0 / static_cast<double>(scale); }
  double lower_edge(int64_t b) const { return static_cast<double>(mn) + static_cast<double>(b) * width(); }
  double upper_edge(int64_t b) const { return lower_edge(b + 1); }

  // For keys v in [mn, mx]: v > last_at_most(b) iff bucket(v) > b, and v < first_at_least(b)
  // iff bucket(v) < b. Found by bisection over the ordered bits of [mn, mx] (at most 64 steps).
  Key last_at_most(int64_t b) const {
    if ((*this)(mx) <= b) return mx;
    OrderedUint<Key> lo = ordered_bits(mn), hi = ordered_bits(mx);  // bucket(lo) <= b < bucket(hi)
    if ((*this)(mn) > b) return std::nextafter(mn, -std::numeric_limits<Key>::infinity());
    while (hi - lo > 1) {
      const auto mid = lo + (hi - lo) / 2;
      ((*this)(from_ordered_bits<Key>(mid)) <= b ? lo : hi) = mid;
    }
    return from_ordered_bits<Key>(lo);
  }
  Key first_at_least(int64_t b) const {
    if ((*this)(mn) >= b) return mn;
    OrderedUint<Key> lo = ordered_bits(mn), hi = ordered_bits(mx);  // bucket(lo) < b <= bucket(hi)
    if ((*this)(mx) < b) return std::nextafter(mx, std::numeric_limits<Key>::infinity());
    while (hi - lo > 1) {
      const auto mid = lo + (hi - lo) / 2;
      ((*this)(from_ordered_bits<Key>(mid)) >= b ? hi : lo) = mid;
    }
    return from_ordered_bits<Key>(hi);
  }
};

// Where ranks k and k+1 (from the top, 1 <= k < n) fall in a histogram.
struct RankBuckets {
  int64_t bk;   // bucket of t_k
  int64_t bk1;  // bucket of t_{k+1} (bk, or the next non-empty bucket below)
};

inline RankBuckets locate_ranks(const uint32_t* hist, int64_t nb, int64_t k) {
  int64_t above = 0, bk = nb - 1;
  while (above + hist[bk] < k) above += hist[bk--];
  int64_t bk1 = bk;
  if (k - above == static_cast<int64_t>(hist[bk])) {  // t_k is the last key of its bucket
    bk1 = bk - 1;
    while (hist[bk1] == 0) --bk1;
  }
  return {bk, bk1};
}

// Histogram of key[0..n) over vb's buckets, left in ways[0..nb); `ways` holds 4 * nb counters.
// Four interleaved sub-histograms, summed at the end: consecutive keys landing in one bucket
// would otherwise chain their increments through memory.
template <typename Key>
void bucket_histogram(const Key* key, int64_t n, const ValueBuckets<Key>& vb, uint32_t* ways) {
  constexpr int64_t kWays = 4;
  const int64_t nb = vb.nb;
  std::fill(ways, ways + kWays * nb, 0u);
  int64_t i = 0;
  for (; i + kWays <= n; i += kWays) {
    for (int64_t u = 0; u < kWays; ++u) ++ways[u * nb + vb(key[i + u])];
  }
  for (; i < n; ++i) ++ways[vb(key[i])];
  for (int64_t u = 1; u < kWays; ++u) {
    for (int64_t b = 0; b < nb; ++b) ways[b] += ways[u * nb + b];
  }
}

// Selection by few ranks pays off when k (or n - k) is small: one pass keeping the best few.
constexpr int64_t kFewRanks = 12;

inline bool few_ranks(int64_t n, int64_t k) { return k < kFewRanks || n - k < kFewRanks; }

// t_k and t_{k+1} of key[0..n) when few_ranks(n, k) (1 <= k < n).
template <typename Key>
KthPair<Key> select_few_ranks(const Key* key, int64_t n, int64_t k, SelectWorkspace<Key>& ws) {
  if (k < kFewRanks) {  // the k+1 largest
    keep_best(key, n, k + 1, ws.buf, std::greater<Key>());
    return {ws.buf[k - 1], ws.buf[k]};
  }
  // the n-k+1 smallest: t_{k+1} is the (n-k)-th smallest
  const int64_t m = n - k + 1;
  keep_best(key, n, m, ws.buf, std::less<Key>());
  return {ws.buf[m - 1], ws.buf[m - 2]};
}

}  // namespace smoothprune
