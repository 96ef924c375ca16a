// A bounded FIFO of admitted-but-not-yet-scheduled requests. When it is full, Push refuses
// with RESOURCE_EXHAUSTED (the public API's back-pressure signal) instead of growing
// without bound. Thread-safe.
#ifndef DSV4_COORDINATOR_REQUEST_QUEUE_H_
#define DSV4_COORDINATOR_REQUEST_QUEUE_H_

#include <cstddef>
#include <deque>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace dsv4::coordinator {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(int capacity) : capacity_(capacity) {}

  // Appends `item`, or returns RESOURCE_EXHAUSTED naming the limit when the queue is full.
  absl::Status Push(T item) {
    absl::MutexLock lock(&mu_);
    if (items_.size() >= static_cast<size_t>(capacity_)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("request queue is full (", capacity_,
                       " waiting, coordinator.max_queue = ", capacity_, "); retry later"));
    }
    items_.push_back(std::move(item));
    return absl::OkStatus();
  }

  // The oldest item, or nothing when empty.
  std::optional<T> TryPop() {
    absl::MutexLock lock(&mu_);
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    return item;
  }

  size_t size() const {
    absl::MutexLock lock(&mu_);
    return items_.size();
  }
  int capacity() const { return capacity_; }

 private:
  const int capacity_;
  mutable absl::Mutex mu_;
  std::deque<T> items_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_REQUEST_QUEUE_H_
