// The CUDA long-row kernel solves a row with pav.h's root search (solve_sorted_row_framed with
// by_root = true) for every p; the CPU grows the block in closed form for p = 2 and 4/3. This
// program runs both on the host over random sorted rows and prints, per row, the largest output
// difference (relative to |x| for the magnitude): tests/ops/test_pav_root_path.py reads it.
// Usage: pav_root_path ROWS SEED
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "../../../smoothprune/csrc/pav.h"

using namespace smoothprune;

namespace {

double output(const std::vector<double>& s, int64_t i, int64_t k, const BoundaryBlock& B, const TopkParams& P) {
  if (i < B.a) return kept_output(s[i], s[i], P);
  if (i >= B.b) return 0.0;
  return framed_block_output(s[i], s[i], B.rel, make_frame(s[k - 1], P));
}

}  // namespace

int main(int argc, char** argv) {
  const int rows = argc > 1 ? std::atoi(argv[1]) : 1000;
  std::mt19937_64 gen(argc > 2 ? std::atoll(argv[2]) : 0);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  const double ps[] = {2.0, 4.0 / 3.0};
  for (int t = 0; t < rows; ++t) {
    const int64_t n = 2 + static_cast<int64_t>(gen() % (t % 10 == 0 ? 5000 : 300));
    const int64_t k = static_cast<int64_t>(gen() % (n + 1));
    const double p = ps[gen() % 2];
    const double lam = std::pow(10.0, 12.0 * uniform(gen));
    const double scale = std::pow(10.0, 240.0 * uniform(gen));
    const bool magnitude = gen() % 2, debias = gen() % 2, ties = gen() % 2;
    std::vector<double> s(n);
    for (double& v : s) {
      v = normal(gen);
      if (ties) v = std::round(2.0 * v) / 2.0;
      v *= scale;
      if (magnitude) v = std::fabs(v);
    }
    std::sort(s.begin(), s.end(), std::greater<double>());
    const TopkParams P = TopkParams::make(lam, p, magnitude, debias);
    const BoundaryBlock grown = solve_sorted_row_framed(s.data(), n, k, P);
    const BoundaryBlock rooted = solve_sorted_row_framed(s.data(), n, k, P, SerialSum{}, /*by_root=*/true);
    double err = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = std::fabs(output(s, i, k, grown, P) - output(s, i, k, rooted, P));
      err = std::max(err, magnitude ? d / std::max(std::fabs(s[i]), 1e-300) : d);
    }
    std::printf("%d %.3g %d %g %g %g %d\n", grown.a < grown.b ? 1 : 0, err, static_cast<int>(n), p, lam, scale,
                magnitude ? 1 : 0);
  }
  return 0;
}
