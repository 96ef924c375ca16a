#include "engine/serving_planner.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dsv4 {

ServingPlanner::ServingPlanner(const ServingLimits& limits)
    : limits_(limits),
      rank_reserved_(limits.attention_ranks, 0),
      rank_sequences_(limits.attention_ranks, 0),
      mb_sequences_(limits.attention_ranks, std::vector<int>(limits.engine.micro_batches, 0)) {}

void ServingPlanner::Event(const std::string& id, std::vector<int32_t> tokens,
                           engine::v1::FinishReason reason, const std::string& error) {
  engine::v1::TokenEvent& event = events_.emplace_back();
  event.set_request_id(id);
  event.mutable_token_ids()->Add(tokens.begin(), tokens.end());
  event.set_finish_reason(reason);
  event.set_error(error);
}

void ServingPlanner::Admit(const engine::v1::Admit& admit) {
  Request r;
  r.admit = admit;
  r.context.assign(admit.prompt_token_ids().begin(), admit.prompt_token_ids().end());
  r.context.insert(r.context.end(), admit.resume_tokens().begin(), admit.resume_tokens().end());
  r.prefill = static_cast<int64_t>(r.context.size());
  r.generated = static_cast<uint64_t>(admit.resume_tokens_size());
  r.reserved = std::min<int64_t>(admit.prompt_token_ids_size() + int64_t{admit.max_tokens()},
                                 limits_.engine.max_seq_len);
  std::string error;
  const std::string& id = admit.request_id();
  auto same_id = [&](const Request& other) { return other.admit.request_id() == id; };
  if (std::any_of(waiting_.begin(), waiting_.end(), same_id) ||
      std::any_of(running_.begin(), running_.end(),
                  [&](const auto& entry) { return same_id(entry.second); })) {
    error = absl::StrCat("request_id \"", id, "\" is already running on this engine");
  } else if (admit.prompt_token_ids().empty()) {
    error = "empty prompt";
  } else if (r.prefill >= limits_.engine.max_seq_len) {
    error = absl::StrCat("prompt + resume tokens (", r.prefill, ") leave no room in max_seq_len ",
                         limits_.engine.max_seq_len);
  } else if (r.reserved > limits_.engine.kv_budget_tokens) {
    error = absl::StrCat("prompt + max_tokens (", r.reserved, ") exceed a rank's KV budget of ",
                         limits_.engine.kv_budget_tokens, " tokens");
  } else if (r.generated >= static_cast<uint64_t>(std::max(admit.max_tokens(), 0))) {
    error = absl::StrCat("max_tokens (", admit.max_tokens(), ") leaves nothing to generate after ",
                         r.generated, " resume tokens");
  }
  if (!error.empty()) {
    Event(id, {}, engine::v1::FINISH_REASON_ERROR, error);
    return;
  }
  waiting_.push_back(std::move(r));
}

void ServingPlanner::Cancel(const std::string& request_id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->admit.request_id() == request_id) {
      Event(request_id, {}, engine::v1::FINISH_REASON_CANCELLED);
      waiting_.erase(it);
      return;
    }
  }
  for (const auto& [sequence, r] : running_) {
    if (r.admit.request_id() == request_id) {
      Finish(sequence, engine::v1::FINISH_REASON_CANCELLED);
      return;
    }
  }
}

void ServingPlanner::Finish(int32_t sequence, engine::v1::FinishReason reason,
                            const std::string& error) {
  auto it = running_.find(sequence);
  Request& r = it->second;
  Event(r.admit.request_id(), {}, reason, error);
  rank_reserved_[r.rank] -= r.reserved;
  rank_sequences_[r.rank] -= 1;
  mb_sequences_[r.rank][r.micro_batch] -= 1;
  release_.push_back(sequence);
  running_.erase(it);
}

bool ServingPlanner::Place(Request* r) {
  int best = -1;
  for (int rank = 0; rank < limits_.attention_ranks; ++rank) {
    if (rank_sequences_[rank] >= limits_.engine.max_seqs_per_rank ||
        rank_reserved_[rank] + r->reserved > limits_.engine.kv_budget_tokens) {
      continue;
    }
    if (best < 0 || std::pair(rank_reserved_[rank], rank_sequences_[rank]) <
                        std::pair(rank_reserved_[best], rank_sequences_[best])) {
      best = rank;
    }
  }
  if (best < 0) return false;
  const std::vector<int>& mbs = mb_sequences_[best];
  r->rank = best;
  r->micro_batch = static_cast<int>(std::min_element(mbs.begin(), mbs.end()) - mbs.begin());
  r->sequence = next_sequence_++;
  rank_reserved_[best] += r->reserved;
  rank_sequences_[best] += 1;
  mb_sequences_[best][r->micro_batch] += 1;
  return true;
}

StepPlan ServingPlanner::Next() {
  StepPlan plan;
  plan.step = step_++;
  plan.release.swap(release_);
  // Continuous batching: admit in arrival order while some rank has room.
  while (!waiting_.empty() && Place(&waiting_.front())) {
    Request& r = waiting_.front();
    running_.emplace(r.sequence, std::move(r));
    waiting_.pop_front();
  }
  std::vector<int64_t> budget(limits_.attention_ranks, limits_.engine.chunked_prefill_tokens);
  for (auto& [sequence, r] : running_) {
    const int64_t pending = static_cast<int64_t>(r.context.size()) - r.fed;
    const bool prefilling = r.fed < r.prefill;
    const int64_t n = prefilling ? std::min(pending, budget[r.rank]) : pending;
    if (n <= 0) continue;
    if (prefilling) budget[r.rank] -= n;
    PlanEntry& e = plan.entries.emplace_back();
    e.sequence = sequence;
    e.rank = r.rank;
    e.micro_batch = r.micro_batch;
    e.tokens.assign(r.context.begin() + r.fed, r.context.begin() + r.fed + n);
    e.sample = r.fed + n == static_cast<int64_t>(r.context.size());
    const engine::v1::SamplingParams& p = r.admit.sampling();
    e.sampling = {p.temperature(), p.top_p() > 0 ? p.top_p() : 1.0f, p.top_k(), p.seed()};
    e.draw = r.generated;
    r.fed += n;
  }
  return plan;
}

void ServingPlanner::OnSampled(absl::Span<const SampledToken> sampled) {
  for (const SampledToken& s : sampled) {
    auto it = running_.find(s.sequence);
    if (it == running_.end()) continue;  // cancelled during the step
    Request& r = it->second;
    r.context.push_back(s.token);
    r.generated += 1;
    Event(r.admit.request_id(), {s.token});
    const auto& stops = r.admit.stop_token_ids();
    if (std::find(stops.begin(), stops.end(), s.token) != stops.end()) {
      Finish(s.sequence, engine::v1::FINISH_REASON_STOP);
    } else if (s.token == limits_.eos_token_id && !r.admit.ignore_eos()) {
      Finish(s.sequence, engine::v1::FINISH_REASON_EOS);
    } else if (r.generated >= static_cast<uint64_t>(r.admit.max_tokens()) ||
               static_cast<int64_t>(r.context.size()) >= limits_.engine.max_seq_len) {
      Finish(s.sequence, engine::v1::FINISH_REASON_LENGTH);
    }
  }
}

std::vector<engine::v1::TokenEvent> ServingPlanner::TakeEvents() {
  // One event per request: a token and the finish that follows it travel together.
  std::vector<engine::v1::TokenEvent> merged;
  for (engine::v1::TokenEvent& e : events_) {
    if (!merged.empty() && merged.back().request_id() == e.request_id() &&
        merged.back().finish_reason() == engine::v1::FINISH_REASON_UNSPECIFIED) {
      engine::v1::TokenEvent& last = merged.back();
      last.mutable_token_ids()->MergeFrom(e.token_ids());
      last.set_finish_reason(e.finish_reason());
      last.set_error(e.error());
    } else {
      merged.push_back(std::move(e));
    }
  }
  events_.clear();
  return merged;
}

int64_t ServingPlanner::kv_used_tokens() const {
  int64_t used = 0;
  for (const auto& [sequence, r] : running_) used += r.fed;
  return used;
}

}  // namespace dsv4
