#include "coordinator/request.h"

#include <algorithm>
#include <utility>

namespace dsv4::coordinator {

Request::Request(std::string id, GenerationSpec spec, const Tokenizer& tokenizer,
                 std::string caller)
    : id_(std::move(id)),
      caller_(std::move(caller)),
      spec_(std::move(spec)),
      admitted_(absl::Now()),
      decoder_(tokenizer, /*skip_special_tokens=*/true) {}

Request::Update Request::WaitForUpdate(size_t tokens_seen, size_t text_seen,
                                       absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return finished_ || tokens_.size() > tokens_seen || text_.size() > text_seen;
  };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  Update update;
  if (tokens_.size() > tokens_seen)
    update.tokens.assign(tokens_.begin() + tokens_seen, tokens_.end());
  if (text_.size() > text_seen) update.text = text_.substr(text_seen);
  update.finished = finished_;
  update.finish_reason = finish_reason_;
  update.error = error_;
  update.arrived = last_tokens_;
  return update;
}

bool Request::AddTokens(const std::vector<int32_t>& tokens, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_ || tokens.empty()) return false;
  if (tokens_.empty()) first_token_ = now;
  last_tokens_ = now;
  size_t longest_stop = 0;
  for (const std::string& s : spec_.stop) longest_stop = std::max(longest_stop, s.size());
  for (int32_t token : tokens) {
    tokens_.push_back(token);
    const size_t before = text_.size();
    text_ += decoder_.Push(token);
    if (spec_.stop.empty() || text_.size() == before) continue;
    // A stop string can only end inside the new piece; search from where it could start.
    const size_t from = before > longest_stop ? before - longest_stop : 0;
    size_t cut = std::string::npos;
    for (const std::string& s : spec_.stop) cut = std::min(cut, text_.find(s, from));
    if (cut != std::string::npos) {
      text_.resize(cut);
      finished_ = true;
      finish_reason_ = v1::FINISH_REASON_STOP;
      done_ = now;
      return true;
    }
  }
  return false;
}

void Request::Finish(v1::FinishReason reason, absl::Status error, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  text_ += decoder_.Flush();
  finished_ = true;
  finish_reason_ = reason;
  error_ = std::move(error);
  done_ = now;
}

bool Request::finished() const {
  absl::MutexLock lock(&mu_);
  return finished_;
}

std::vector<int32_t> Request::tokens() const {
  absl::MutexLock lock(&mu_);
  return tokens_;
}

void Request::FillUsageAndTimings(v1::GenerateResponse* response) const {
  absl::MutexLock lock(&mu_);
  response->mutable_usage()->set_prompt_tokens(prompt_tokens());
  response->mutable_usage()->set_completion_tokens(static_cast<int32_t>(tokens_.size()));
  v1::Timings* t = response->mutable_timings();
  if (!tokens_.empty()) {
    t->set_time_to_first_token_ms(absl::ToDoubleMilliseconds(first_token_ - admitted_));
  }
  if (tokens_.size() > 1) {
    t->set_mean_time_per_output_token_ms(absl::ToDoubleMilliseconds(done_ - first_token_) /
                                         static_cast<double>(tokens_.size() - 1));
  }
  t->set_total_ms(absl::ToDoubleMilliseconds(done_ - admitted_));
}

}  // namespace dsv4::coordinator

namespace dsv4::coordinator {

void Request::RecordMetrics(Metrics& metrics) const {
  absl::MutexLock lock(&mu_);
  metrics.AddPromptTokens(prompt_tokens());
  metrics.AddGeneratedTokens(static_cast<int64_t>(tokens_.size()));
  metrics.AddCallerTokens(caller_, prompt_tokens(), static_cast<int64_t>(tokens_.size()));
  if (!tokens_.empty())
    metrics.ObserveTimeToFirstToken(absl::ToDoubleSeconds(first_token_ - admitted_));
  if (tokens_.size() > 1) {
    metrics.ObserveTimePerOutputToken(absl::ToDoubleSeconds(done_ - first_token_) /
                                      static_cast<double>(tokens_.size() - 1));
  }
  metrics.ObserveEndToEnd(absl::ToDoubleSeconds(done_ - admitted_));
  if (!error_.ok()) {
    metrics.RequestFinished(error_.code());
  } else {
    metrics.RequestFinished(finish_reason_ == v1::FINISH_REASON_CANCELLED ? "cancelled" : "ok");
  }
}

}  // namespace dsv4::coordinator
