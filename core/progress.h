// A progress bar on stderr for long-running work. It stays silent for the first second,
// so quick runs print nothing, and redraws at most ten times a second.
#ifndef DSV4_CORE_PROGRESS_H_
#define DSV4_CORE_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <string>

namespace dsv4 {

class ProgressBar {
 public:
  // `unit` labels the counts ("MB", "layouts").
  ProgressBar(std::string label, int64_t total, std::string unit);
  ~ProgressBar();  // finishes the line if anything was drawn

  void Update(int64_t done);
  void Finish();

 private:
  void Draw(int64_t done);

  std::string label_;
  int64_t total_;
  std::string unit_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool drawn_ = false;
  bool finished_ = false;
};

}  // namespace dsv4

#endif  // DSV4_CORE_PROGRESS_H_
