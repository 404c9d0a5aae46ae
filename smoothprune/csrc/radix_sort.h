// Descending, stable key/index sort of one row, used by the PAV forward.
//
// Keys are the row's values mapped to unsigned integers whose ascending order is the descending
// order of the values (`descending_key`). Long rows use an LSD radix sort with 8-bit digits
// (digits on which all keys agree are skipped, which is common for the sign and exponent bytes);
// short rows use std::sort. Both are stable in the original index, so ties keep index order.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "float_order.h"

namespace smoothprune {

// ordered_bits inverted: ascending integer order is descending value order. -0.0 must be
// canonicalised to +0.0 by the caller (it would sort after +0.0).
template <typename F>
inline OrderedUint<F> descending_key(F v) {
  return ~ordered_bits(v);
}

// Scratch buffers reused across the rows a thread processes.
template <typename K>
struct SortWorkspace {
  std::vector<K> keys, keys_tmp;
  std::vector<int32_t> idx, idx_tmp;
  std::vector<std::pair<K, int32_t>> pairs;
  // Grows only: buffers are reused across rows and calls (see RowScratch in soft_topk_cpu.cpp).
  void resize(int64_t n) {
    if (static_cast<int64_t>(keys.size()) >= n) return;
    keys.resize(n);
    keys_tmp.resize(n);
    idx.resize(n);
    idx_tmp.resize(n);
  }
};

constexpr int64_t kRadixMinLength = 256;

// Sorts ws.keys[0:n] ascending (stable) and leaves the permutation in ws.idx[0:n]:
// ws.idx[i] is the original position of the i-th sorted key.
template <typename K>
void sort_keys_with_index(SortWorkspace<K>& ws, int64_t n) {
  static_assert(std::is_unsigned<K>::value, "radix keys must be unsigned");
  if (n < kRadixMinLength) {
    if (static_cast<int64_t>(ws.pairs.size()) < n) ws.pairs.resize(n);
    for (int64_t i = 0; i < n; ++i) ws.pairs[i] = {ws.keys[i], static_cast<int32_t>(i)};
    std::sort(ws.pairs.begin(), ws.pairs.begin() + n);  // (key, index): stable by construction
    for (int64_t i = 0; i < n; ++i) {
      ws.keys[i] = ws.pairs[i].first;
      ws.idx[i] = ws.pairs[i].second;
    }
    return;
  }
  constexpr int kDigits = sizeof(K);
  std::array<std::array<int64_t, 256>, kDigits> counts{};
  const K* keys = ws.keys.data();
  for (int64_t i = 0; i < n; ++i) {
    K key = keys[i];
    for (int d = 0; d < kDigits; ++d) counts[d][(key >> (8 * d)) & 0xFF]++;
  }
  for (int64_t i = 0; i < n; ++i) ws.idx[i] = static_cast<int32_t>(i);

  K* src_k = ws.keys.data();
  K* dst_k = ws.keys_tmp.data();
  int32_t* src_i = ws.idx.data();
  int32_t* dst_i = ws.idx_tmp.data();
  for (int d = 0; d < kDigits; ++d) {
    auto& c = counts[d];
    const int shift = 8 * d;
    // A digit on which every key agrees does not change the order.
    if (c[(src_k[0] >> shift) & 0xFF] == n) continue;
    std::array<int64_t, 256> offset;
    int64_t running = 0;
    for (int b = 0; b < 256; ++b) {
      offset[b] = running;
      running += c[b];
    }
    for (int64_t i = 0; i < n; ++i) {
      const K key = src_k[i];
      const int64_t pos = offset[(key >> shift) & 0xFF]++;
      dst_k[pos] = key;
      dst_i[pos] = src_i[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_i, dst_i);
  }
  if (src_k != ws.keys.data()) {
    std::memcpy(ws.keys.data(), src_k, n * sizeof(K));
    std::memcpy(ws.idx.data(), src_i, n * sizeof(int32_t));
  }
}

}  // namespace smoothprune
