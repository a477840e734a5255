// The strided float32 transposition of winograd_conv's layout changes against
// the definition, on sizes with and without whole 8x8 blocks, leaving the
// destination's other elements as they were.
#include <gtest/gtest.h>

#include <vector>

#include "ldm/modules/transpose_kernel.h"

using namespace ldm;

TEST(Transpose, MatchesTheDefinitionOnBlocksAndEdges) {
  for (int64_t rows : {1, 7, 8, 9, 16, 21, 64})
    for (int64_t cols : {1, 5, 8, 13, 24, 66}) {
      const int64_t lds = cols + 3, ldd = rows + 5;
      std::vector<float> src(rows * lds), dst(cols * ldd, -1.0f);
      for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.5f + 1.0f;
      transpose_f32(src.data(), lds, dst.data(), ldd, rows, cols);
      int wrong = 0;
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t i = 0; i < ldd; ++i) {
          const float want = i < rows ? src[i * lds + j] : -1.0f;  // past `rows`: untouched
          wrong += dst[j * ldd + i] != want;
        }
      EXPECT_EQ(wrong, 0) << rows << "x" << cols;
    }
}
