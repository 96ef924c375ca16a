// Network strings in the coordinator's log: one line, no control bytes, bounded length.
#include "coordinator/log_safe.h"

#include <string>

#include "gtest/gtest.h"

namespace dsv4::coordinator {
namespace {

TEST(LogSafeTest, EscapesControlBytesAndBoundsTheLength) {
  EXPECT_EQ(LogSafe("engine-0"), "engine-0");
  EXPECT_EQ(LogSafe("engine-0\n[coordinator] [info] forged"),
            "engine-0\\n[coordinator] [info] forged");
  EXPECT_EQ(LogSafe("a\r\tb\\c\x1b[31m"), "a\\r\\tb\\\\c\\x1b[31m");
  EXPECT_EQ(LogSafe("\xc3\xa9"), "\\xc3\\xa9");
  const std::string escaped = LogSafe(std::string(1000, 'x'));
  EXPECT_EQ(escaped, std::string(256, 'x') + "...");
}

}  // namespace
}  // namespace dsv4::coordinator
