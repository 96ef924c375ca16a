#include "coordinator/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dsv4::coordinator {
namespace {

v1::FinishReason PublicReason(engine::v1::FinishReason reason) {
  switch (reason) {
    case engine::v1::FINISH_REASON_LENGTH:
      return v1::FINISH_REASON_LENGTH;
    case engine::v1::FINISH_REASON_STOP:
      return v1::FINISH_REASON_STOP;
    case engine::v1::FINISH_REASON_EOS:
      return v1::FINISH_REASON_EOS;
    case engine::v1::FINISH_REASON_CANCELLED:
      return v1::FINISH_REASON_CANCELLED;
    default:
      return v1::FINISH_REASON_UNSPECIFIED;
  }
}

// The Admit that (re)starts `request` on an engine now: resume_tokens = the tokens generated so
// far (none on a first admission).
engine::v1::Admit AdmitMessage(const Request& request) {
  const GenerationSpec& spec = request.spec();
  engine::v1::Admit admit;
  admit.set_request_id(request.id());
  admit.mutable_prompt_token_ids()->Add(spec.prompt_token_ids.begin(), spec.prompt_token_ids.end());
  engine::v1::SamplingParams* sampling = admit.mutable_sampling();
  sampling->set_temperature(spec.sampling.temperature);
  sampling->set_top_p(spec.sampling.top_p);
  sampling->set_top_k(spec.sampling.top_k);
  sampling->set_seed(spec.sampling.seed);
  admit.set_max_tokens(spec.max_tokens);
  admit.mutable_stop_token_ids()->Add(spec.stop_token_ids.begin(), spec.stop_token_ids.end());
  admit.set_ignore_eos(spec.ignore_eos);
  const std::vector<int32_t> resume = request.tokens();
  admit.mutable_resume_tokens()->Add(resume.begin(), resume.end());
  return admit;
}

engine::v1::CoordinatorMessage CancelMessage(const std::string& id) {
  engine::v1::CoordinatorMessage message;
  message.mutable_cancel()->set_request_id(id);
  return message;
}

// The key of a client request_id: the caller's name and the id, which a newline (never in a
// key name) keeps apart.
std::string ClientKey(const ClientRequestId& client) {
  return absl::StrCat(client.caller, "\n", client.request_id);
}

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, EngineRegistry& registry,
                     const Tokenizer& tokenizer, Metrics* metrics)
    : options_(options), registry_(registry), tokenizer_(tokenizer), metrics_(metrics) {
  dispatcher_ = std::thread([this] { DispatchLoop(); });
}

Scheduler::~Scheduler() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  dispatcher_.join();
}

absl::StatusOr<std::shared_ptr<Request>> Scheduler::Submit(GenerationSpec spec,
                                                           const ClientRequestId& client) {
  absl::MutexLock lock(&mu_);
  const std::string client_key = client.request_id.empty() ? "" : ClientKey(client);
  if (!client_key.empty()) {
    auto known = by_client_id_.find(client_key);
    if (known != by_client_id_.end()) {
      if (known->second.digest != client.digest) {
        return absl::AlreadyExistsError(
            absl::StrCat("request_id \"", client.request_id,
                         "\" is already used for a different request: a retry must repeat the "
                         "same request; use a new request_id for a new one"));
      }
      auto entry = requests_.find(known->second.request->id());
      if (entry != requests_.end()) entry->second.readers += 1;
      return known->second.request;
    }
  }
  if (!unavailable_.ok()) return unavailable_;
  // The registry knows an engine from its Hello on, a little before EngineConnected.
  if (engines_.empty() && !engines_expected_ && registry_.size() == 0) {
    return absl::UnavailableError(
        "no engine connected: the coordinator has no serving engine to run the request; start "
        "dsv4-engine against this coordinator (or let it launch one) and retry");
  }
  if (queue_.size() >= static_cast<size_t>(options_.max_queue)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request queue is full (", queue_.size(),
        " requests waiting for an engine, coordinator.max_queue = ", options_.max_queue,
        "); retry later"));
  }
  const std::string id = absl::StrCat("r", next_id_++);
  auto request = std::make_shared<Request>(id, std::move(spec), tokenizer_, client.caller);
  requests_.emplace(id, Entry{request, "", client_key});
  queue_.push_back(id);
  if (!client_key.empty()) by_client_id_[client_key] = Known{request, client.digest};
  UpdateGaugesLocked();
  return request;
}

void Scheduler::Detach(const std::shared_ptr<Request>& request) {
  std::string engine;
  {
    absl::MutexLock lock(&mu_);
    auto it = requests_.find(request->id());
    if (it == requests_.end() || --it->second.readers > 0) return;
    Entry& entry = it->second;
    if (entry.engine.empty()) {
      auto queued = std::find(queue_.begin(), queue_.end(), request->id());
      if (queued != queue_.end()) queue_.erase(queued);
      FinishLocked(request->id(), v1::FINISH_REASON_CANCELLED, absl::OkStatus());
      return;
    }
    // The engine frees the sequence and confirms with a final event; until then the request
    // keeps its slot (and is not replayed if the engine dies meanwhile).
    entry.client_left = entry.released = true;
    entry.request->Finish(v1::FINISH_REASON_CANCELLED, absl::OkStatus(), absl::Now());
    engine = entry.engine;
  }
  registry_.Send(engine, CancelMessage(request->id())).IgnoreError();  // a lost engine is fine
}

void Scheduler::FinishLocked(const std::string& id, v1::FinishReason reason, absl::Status error) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  Entry& entry = it->second;
  if (!entry.engine.empty()) engines_[entry.engine].requests.erase(id);
  const bool cancelled = entry.client_left || reason == v1::FINISH_REASON_CANCELLED;
  entry.request->Finish(reason, std::move(error), absl::Now());
  if (metrics_ != nullptr) entry.request->RecordMetrics(*metrics_);
  if (!entry.client_id.empty()) {
    if (cancelled) {
      // A retry after a cancellation runs again (and, seeded, samples the same tokens).
      auto known = by_client_id_.find(entry.client_id);
      if (known != by_client_id_.end() && known->second.request == entry.request)
        by_client_id_.erase(known);
    } else {
      finished_client_ids_.push_back(entry.client_id);
      while (finished_client_ids_.size() > static_cast<size_t>(options_.remember_finished)) {
        by_client_id_.erase(finished_client_ids_.front());
        finished_client_ids_.pop_front();
      }
    }
  }
  requests_.erase(it);
  UpdateGaugesLocked();
}

void Scheduler::EngineConnected(const std::string& engine_id, int max_running) {
  absl::MutexLock lock(&mu_);
  engines_[engine_id] = Engine{std::max(max_running, 1), {}};
}

void Scheduler::OnTokens(const std::string& engine_id, const engine::v1::TokenEvent& event) {
  bool stop_string = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = requests_.find(event.request_id());
    if (it == requests_.end() || it->second.engine != engine_id) return;  // stale
    Entry& entry = it->second;
    const std::vector<int32_t> tokens(event.token_ids().begin(), event.token_ids().end());
    stop_string = !entry.released && entry.request->AddTokens(tokens, absl::Now());
    if (event.finish_reason() == engine::v1::FINISH_REASON_ERROR) {
      FinishLocked(event.request_id(), v1::FINISH_REASON_UNSPECIFIED,
                   absl::InternalError(absl::StrCat("engine ", engine_id, ": ", event.error())));
      return;
    }
    if (event.finish_reason() != engine::v1::FINISH_REASON_UNSPECIFIED) {
      FinishLocked(event.request_id(), PublicReason(event.finish_reason()), absl::OkStatus());
      return;
    }
    entry.released = entry.released || stop_string;  // AddTokens finished it (STOP)
  }
  if (stop_string) registry_.Send(engine_id, CancelMessage(event.request_id())).IgnoreError();
}

void Scheduler::EngineLost(const std::string& engine_id) {
  absl::MutexLock lock(&mu_);
  auto engine = engines_.find(engine_id);
  if (engine == engines_.end()) return;
  // Back to the front of the queue in admission order ("r<N>" ids sort by N within a length).
  std::vector<std::string> held(engine->second.requests.begin(), engine->second.requests.end());
  std::sort(held.begin(), held.end(), [](const std::string& a, const std::string& b) {
    return std::pair(a.size(), a) < std::pair(b.size(), b);
  });
  engines_.erase(engine);
  for (auto it = held.rbegin(); it != held.rend(); ++it) {
    Entry& entry = requests_.at(*it);
    entry.engine.clear();
    if (entry.released) {
      FinishLocked(*it, v1::FINISH_REASON_CANCELLED, absl::OkStatus());
    } else {
      queue_.push_front(*it);
    }
  }
  UpdateGaugesLocked();
}

void Scheduler::SetEnginesExpected(bool expected) {
  absl::MutexLock lock(&mu_);
  engines_expected_ = expected;
}

void Scheduler::SetUnavailable(const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  unavailable_ = reason;
  engines_expected_ = false;
  std::vector<std::string> ids;
  for (const auto& [id, entry] : requests_) ids.push_back(id);
  for (const std::string& id : ids) FinishLocked(id, v1::FINISH_REASON_UNSPECIFIED, reason);
  queue_.clear();
  UpdateGaugesLocked();
}

int Scheduler::queue_depth() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

int Scheduler::running() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(requests_.size() - queue_.size());
}

void Scheduler::FillRunning(v1::ClusterStatus* status) const {
  absl::MutexLock lock(&mu_);
  for (v1::EngineStatus& engine : *status->mutable_engines()) {
    auto it = engines_.find(engine.id());
    if (it != engines_.end())
      engine.set_running_requests(static_cast<int>(it->second.requests.size()));
  }
}

void Scheduler::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->SetQueueDepth(static_cast<int>(queue_.size()));
  metrics_->SetRunningRequests(static_cast<int>(requests_.size() - queue_.size()));
}

void Scheduler::DispatchLoop() {
  for (;;) {
    std::string engine_id;
    engine::v1::CoordinatorMessage message;
    {
      absl::MutexLock lock(&mu_);
      // The engine with the most free slots, when the queue has work and some engine room.
      auto pick = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> std::string {
        std::string best;
        int most_free = 0;
        for (const auto& [id, engine] : engines_) {
          const int free = engine.max_running - static_cast<int>(engine.requests.size());
          if (free > most_free && registry_.Accepting(id)) {
            best = id;
            most_free = free;
          }
        }
        return best;
      };
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || (!queue_.empty() && !pick().empty());
      };
      // Timed: a draining flag lives in the registry, whose changes do not wake us.
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(100));
      if (stop_) return;
      if (queue_.empty()) continue;
      engine_id = pick();
      if (engine_id.empty()) continue;
      const std::string id = queue_.front();
      queue_.pop_front();
      Entry& entry = requests_.at(id);
      entry.engine = engine_id;
      engines_[engine_id].requests.insert(id);
      *message.mutable_admit() = AdmitMessage(*entry.request);
      UpdateGaugesLocked();
    }
    // Outside the lock: a slow stream must not stall the API. If the engine is gone, its
    // handler's EngineLost puts the request back in the queue.
    registry_.Send(engine_id, message).IgnoreError();
  }
}

}  // namespace dsv4::coordinator
