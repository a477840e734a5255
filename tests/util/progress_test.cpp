// Progress's rate counts the time a step took before the progress existed:
// the CLI makes it at the sampler's first report, after step 1 has run.
#include <gtest/gtest.h>

#include "ldm/util/progress.h"

using namespace ldm;

TEST(Progress, RateCountsTimeAlreadyElapsed) {
  Progress p("test", 10, 0, /*elapsed=*/2.0);
  p.update(1);
  EXPECT_GT(p.rate(), 0.45);  // one step in ~2 s (plus the microseconds since)
  EXPECT_LE(p.rate(), 0.5);
  Progress q("test", 10, 4, 4.0);  // resumed at step 4: only steps done here count
  q.update(6);
  EXPECT_LE(q.rate(), 0.5);
  EXPECT_GT(q.rate(), 0.45);
}

TEST(Progress, TheLastStepEndsTheClock) {
  Progress p("test", 2, 0, 1.0);
  p.update(2);  // the last step, ~1 s after the start
  const double r = p.rate();
  EXPECT_GT(r, 1.9);
  for (volatile int i = 0; i < 20000000; ++i) {}  // later work (the CLI's decode) is not sampling time
  EXPECT_EQ(p.rate(), r);
}

TEST(Progress, DurationFormat) {
  EXPECT_EQ(format_duration(0.4), "00:00");
  EXPECT_EQ(format_duration(61.0), "01:01");
  EXPECT_EQ(format_duration(3725.0), "1:02:05");
  EXPECT_EQ(format_duration(-1.0), "--:--");
}
