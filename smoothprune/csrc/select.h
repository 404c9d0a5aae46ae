// Selection of t_k and t_{k+1}, the k-th and (k+1)-th largest keys of a finite row (1 <= k < n),
// in O(n), for the selection-based forward (DESIGN.md section 2).
//
// - Small k (or small n - k): one pass keeping the k+1 largest (or the n-k+1 smallest) in a
//   sorted buffer; after a few entries almost every key is rejected by one predictable compare.
// - Otherwise: a value-range bucket select. Keys are spread over `nb` equal-width buckets
//   between the row's min and max (bucket index is monotone in the key, so every key of a higher
//   bucket is larger than every key of a lower one), a histogram locates the buckets holding
//   ranks k and k+1, and std::nth_element runs on those few candidates only. This replaces
//   std::nth_element over the whole row, whose data-dependent branches dominate on short rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

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

// mn and mx are the row's minimum and maximum key (the caller has them from its key pass).
template <typename Key>
KthPair<Key> select_kth_pair(const Key* key, int64_t n, int64_t k, Key mn, Key mx, SelectWorkspace<Key>& ws) {
  constexpr int64_t kSmall = 12;
  if (k < kSmall) {  // the k+1 largest
    keep_best(key, n, k + 1, ws.buf, std::greater<Key>());
    return {ws.buf[k - 1], ws.buf[k]};
  }
  if (n - k < kSmall) {  // the n-k+1 smallest: t_{k+1} is the (n-k)-th smallest
    const int64_t m = n - k + 1;
    keep_best(key, n, m, ws.buf, std::less<Key>());
    return {ws.buf[m - 1], ws.buf[m - 2]};
  }
  if (!(mn < mx)) return {mx, mx};  // all keys equal
  // About 4 keys per bucket, between 64 and 4096 buckets.
  const int64_t nb = std::clamp<int64_t>(n / 4, 64, 4096);
  const double scale = static_cast<double>(nb) / (static_cast<double>(mx) - static_cast<double>(mn));
  const double base = static_cast<double>(mn);
  auto bucket = [&](Key v) {
    const int64_t b = static_cast<int64_t>((static_cast<double>(v) - base) * scale);
    return b < nb ? b : nb - 1;
  };
  ws.hist.assign(nb, 0u);
  uint32_t* hist = ws.hist.data();
  for (int64_t i = 0; i < n; ++i) ++hist[bucket(key[i])];
  // Buckets of rank k and k+1, from the top.
  int64_t above = 0, bk = nb - 1;
  while (above + hist[bk] < k) above += hist[bk--];
  const int64_t rank = k - above;  // 1-based rank of t_k inside bucket bk
  int64_t bk1 = bk;                // bucket of t_{k+1}
  if (rank == static_cast<int64_t>(hist[bk])) {
    bk1 = bk - 1;
    while (hist[bk1] == 0) --bk1;
  }
  ws.cand.clear();
  Key next_max = mn;  // the largest key of bucket bk1 when bk1 != bk
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = bucket(key[i]);
    if (b == bk) {
      ws.cand.push_back(key[i]);
    } else if (b == bk1 && key[i] > next_max) {
      next_max = key[i];
    }
  }
  auto first = ws.cand.begin();
  std::nth_element(first, first + (rank - 1), ws.cand.end(), std::greater<Key>());
  const Key tk = ws.cand[rank - 1];
  const Key tk1 = bk1 == bk ? *std::max_element(first + rank, ws.cand.end()) : next_max;
  return {tk, tk1};
}

}  // namespace smoothprune
