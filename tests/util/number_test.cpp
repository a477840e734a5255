// The one parser for numbers in user text: whole strings only, never throws.
#include "ldm/util/number.h"

#include <cmath>

#include "tests/testing.h"

using ldm::format_number;
using ldm::parse_double;

TEST(Number, ParsesWholeStrings) {
  EXPECT_EQ(parse_double("1.5").value(), 1.5);
  EXPECT_EQ(parse_double("-2e3").value(), -2000.0);
  EXPECT_EQ(parse_double(" 0.25").value(), 0.25);  // leading spaces, as std::stod
  EXPECT_TRUE(std::isinf(parse_double("inf").value()));
  EXPECT_TRUE(std::isnan(parse_double("nan").value()));
}

TEST(Number, RefusesPartialsAndOverflow) {
  for (const char* s : {"", " ", "1.5x", "1.5 ", "a", "1,2", "--1", "1e999", "0x"})
    EXPECT_FALSE(parse_double(s).has_value()) << '"' << s << '"';
}

TEST(Number, FormatsShortestReadable) {
  EXPECT_EQ(format_number(2), "2");
  EXPECT_EQ(format_number(0.5), "0.5");
  EXPECT_EQ(format_number(INFINITY), "inf");
  EXPECT_EQ(format_number(-1e-7), "-1e-07");
  EXPECT_EQ(parse_double(format_number(0.125)).value(), 0.125);
}
