#include "core/progress.h"

#include <unistd.h>
#include <cstdio>

#include <algorithm>

namespace dsv4 {

namespace {
constexpr auto kQuietPeriod = std::chrono::seconds(1);
constexpr auto kRedrawPeriod = std::chrono::milliseconds(100);
constexpr int kBarWidth = 30;
}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      unit_(std::move(unit)),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(int64_t done) {
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < kQuietPeriod) return;
  if (drawn_ && now - last_draw_ < kRedrawPeriod) return;
  // Without a terminal, redraws would fill a log; draw a line every ~10%.
  if (!isatty(STDERR_FILENO) && drawn_ && now - last_draw_ < std::chrono::seconds(5)) return;
  last_draw_ = now;
  Draw(done);
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  if (drawn_) {
    Draw(total_);
    if (isatty(STDERR_FILENO)) std::fputc('\n', stderr);
  }
}

void ProgressBar::Draw(int64_t done) {
  done = std::clamp<int64_t>(done, 0, total_);
  const double fraction = static_cast<double>(done) / static_cast<double>(total_);
  const int filled = static_cast<int>(fraction * kBarWidth);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const bool tty = isatty(STDERR_FILENO);
  std::fprintf(stderr, "%s%s [%.*s%*s] %3.0f%% %lld/%lld %s %.1fs%s", tty ? "\r" : "",
               label_.c_str(), filled, "##############################", kBarWidth - filled, "",
               fraction * 100.0, static_cast<long long>(done), static_cast<long long>(total_),
               unit_.c_str(), seconds, tty ? "" : "\n");
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace dsv4
