#include "ldm/modules/encoders/modules.h"

#include "ldm/error.h"
#include "tests/testing.h"

using namespace ldm;

// Label dropout for classifier-free guidance: only in training mode, at the
// configured rate, to the last (null) class.
TEST(ClassEmbedder, DropoutToTheNullClass) {
  ClassEmbedder ce(8, 11, "class_label", 0.25);
  auto labels = torch::full({4000}, 3, torch::kInt64);
  auto null = ce.unconditional(1)[0][0];
  auto count_null = [&](const torch::Tensor& e) { return e.squeeze(1).eq(null).all(1).sum().item<int64_t>(); };
  ce.eval();
  EXPECT_EQ(count_null(ce.forward(labels)), 0);
  ce.train();
  auto g = torch::make_generator<at::CPUGeneratorImpl>(0);
  auto n = count_null(ce.forward(labels, g));
  EXPECT_NEAR(n / 4000.0, 0.25, 0.03);
  EXPECT_EQ(ce.forward(labels).sizes(), (std::vector<int64_t>{4000, 1, 8}));
  EXPECT_THROW(ce.forward(torch::tensor({11})), Error);
}
