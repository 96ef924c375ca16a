#include "coordinator/engine_registry.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dsv4::coordinator {

absl::Status EngineConnection::Write(const engine::v1::CoordinatorMessage& message) {
  if (stream_ == nullptr || !stream_->Write(message)) {
    return absl::UnavailableError("the engine's control stream is closed");
  }
  return absl::OkStatus();
}

absl::Status EngineConnection::Open(const engine::v1::CoordinatorMessage& welcome) {
  absl::MutexLock lock(&mu_);
  absl::Status status = Write(welcome);
  open_ = status.ok();
  return status;
}

absl::Status EngineConnection::Send(const engine::v1::CoordinatorMessage& message) {
  absl::MutexLock lock(&mu_);
  if (!open_) return absl::UnavailableError("the engine is still connecting; retry");
  return Write(message);
}

void EngineConnection::Close() {
  absl::MutexLock lock(&mu_);
  stream_ = nullptr;
}

void EngineConnection::Cancel() {
  absl::MutexLock lock(&mu_);
  if (stream_ != nullptr) context_->TryCancel();
}

namespace {

// Constant-time comparison: the time taken does not reveal a matching prefix.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(b.size(), 1)];
  return diff == 0 && !b.empty();
}

}  // namespace

absl::Status EngineRegistry::Add(const engine::v1::Hello& hello,
                                 std::shared_ptr<EngineConnection> connection,
                                 absl::Duration evict_timeout) {
  absl::MutexLock lock(&mu_);
  const std::string& id = hello.engine_id();
  auto reserved = nonces_.find(id);
  if (reserved != nonces_.end()) {
    if (!SameSecret(hello.launch_nonce(), reserved->second)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "engine_id \"", id,
          "\" belongs to an engine this coordinator launches, and this connection does not "
          "carry that launch's nonce"));
    }
    // The launch's own engine: whatever still holds the id is an earlier stream; end it.
    if (auto it = engines_.find(id); it != engines_.end()) it->second.connection->Cancel();
    auto gone = [this, &id]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return engines_.count(id) == 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&gone), evict_timeout)) {
      return absl::UnavailableError(
          absl::StrCat("the previous connection of engine \"", id, "\" is still closing; retry"));
    }
  }
  Entry entry;
  entry.hello = hello;
  entry.hello.clear_launch_nonce();
  entry.nonce = hello.launch_nonce();
  entry.connection = std::move(connection);
  entry.last_seen = absl::Now();
  entry.placement_summary = hello.placement_summary();
  if (!engines_.try_emplace(id, std::move(entry)).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("an engine with engine_id \"", id, "\" is already connected"));
  }
  return absl::OkStatus();
}

void EngineRegistry::Reserve(const std::string& engine_id, const std::string& nonce) {
  absl::MutexLock lock(&mu_);
  nonces_[engine_id] = nonce;
  auto it = engines_.find(engine_id);
  if (it != engines_.end() && !SameSecret(it->second.nonce, nonce)) {
    it->second.connection->Cancel();
  }
}

bool EngineRegistry::Reserved(const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  return nonces_.count(engine_id) > 0;
}

void EngineRegistry::RecordHeartbeat(const std::string& engine_id,
                                     const engine::v1::Heartbeat& heartbeat) {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  if (it == engines_.end()) return;
  it->second.heartbeat = heartbeat;
  it->second.last_seen = absl::Now();
  for (const engine::v1::LayerExpertLoad& layer : heartbeat.expert_load()) {
    std::vector<int64_t>& sum = it->second.expert_load[layer.layer()];
    sum.resize(std::max<size_t>(sum.size(), layer.tokens_per_expert_size()), 0);
    for (int e = 0; e < layer.tokens_per_expert_size(); ++e) sum[e] += layer.tokens_per_expert(e);
  }
}

void EngineRegistry::RecordOccupancy(const std::string& engine_id,
                                     const engine::v1::Occupancy& occupancy) {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  if (it != engines_.end()) *it->second.heartbeat.mutable_occupancy() = occupancy;
}

std::vector<std::string> EngineRegistry::CancelSilent(absl::Duration max_silence, absl::Time now) {
  std::vector<std::shared_ptr<EngineConnection>> silent;
  std::vector<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : engines_) {
      if (now - entry.last_seen > max_silence) {
        silent.push_back(entry.connection);
        ids.push_back(id);
      }
    }
  }
  for (const auto& connection : silent) connection->Cancel();
  return ids;
}

void EngineRegistry::Remove(const std::string& engine_id, const EngineConnection* connection) {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  if (it != engines_.end() && it->second.connection.get() == connection) engines_.erase(it);
}

absl::Status EngineRegistry::Send(const std::string& engine_id,
                                  const engine::v1::CoordinatorMessage& message) {
  std::shared_ptr<EngineConnection> connection;
  {
    absl::MutexLock lock(&mu_);
    auto it = engines_.find(engine_id);
    if (it == engines_.end()) {
      return absl::NotFoundError(absl::StrCat("no engine \"", engine_id, "\" is connected"));
    }
    if (message.has_drain()) it->second.draining = true;
    connection = it->second.connection;
  }
  // Outside the registry lock: a slow engine must not stall status queries.
  return connection->Send(message);
}

absl::StatusOr<std::vector<engine::v1::LayerExpertLoad>> EngineRegistry::ExpertLoad(
    const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  if (it == engines_.end()) {
    return absl::NotFoundError(absl::StrCat("no engine \"", engine_id, "\" is connected"));
  }
  std::vector<engine::v1::LayerExpertLoad> load;
  for (const auto& [layer, counts] : it->second.expert_load) {
    engine::v1::LayerExpertLoad& l = load.emplace_back();
    l.set_layer(layer);
    l.mutable_tokens_per_expert()->Add(counts.begin(), counts.end());
  }
  return load;
}

void EngineRegistry::RecordRebalanced(const std::string& engine_id,
                                      const engine::v1::Rebalanced& rebalanced) {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  if (it == engines_.end()) return;
  it->second.rebalances += 1;
  it->second.rebalanced = rebalanced;
  it->second.placement_summary = rebalanced.placement_summary();
}

int EngineRegistry::RebalanceCount(const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  return it == engines_.end() ? 0 : it->second.rebalances;
}

absl::StatusOr<engine::v1::Rebalanced> EngineRegistry::WaitRebalanced(
    const std::string& engine_id, int count, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = engines_.find(engine_id);
    return it == engines_.end() || it->second.rebalances > count;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("engine \"", engine_id,
                                                    "\" did not apply the rebalance within ",
                                                    absl::FormatDuration(timeout)));
  }
  auto it = engines_.find(engine_id);
  if (it == engines_.end()) {
    return absl::UnavailableError(
        absl::StrCat("engine \"", engine_id, "\" left before applying the rebalance"));
  }
  return it->second.rebalanced;
}

std::vector<std::string> EngineRegistry::Ids() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (const auto& [id, entry] : engines_) ids.push_back(id);
  return ids;
}

bool EngineRegistry::Has(const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  return engines_.count(engine_id) > 0;
}

std::vector<std::pair<std::string, int64_t>> EngineRegistry::RankProcesses(
    const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::string, int64_t>> out;
  auto it = engines_.find(engine_id);
  if (it == engines_.end()) return out;
  for (const engine::v1::RankInfo& r : it->second.hello.ranks())
    out.emplace_back(r.host(), r.pid());
  return out;
}

bool EngineRegistry::Accepting(const std::string& engine_id) const {
  absl::MutexLock lock(&mu_);
  auto it = engines_.find(engine_id);
  return it != engines_.end() && !it->second.draining;
}

void EngineRegistry::SetRestarts(const std::string& engine_id, int restarts) {
  absl::MutexLock lock(&mu_);
  restarts_[engine_id] = restarts;
}

int EngineRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(engines_.size());
}

void EngineRegistry::FillStatus(v1::ClusterStatus* status) const {
  absl::MutexLock lock(&mu_);
  std::map<int, std::vector<int64_t>> load;  // layer → tokens per expert, all engines
  for (const auto& [id, entry] : engines_) {
    v1::EngineStatus* engine = status->add_engines();
    engine->set_id(id);
    engine->set_state(entry.draining ? "draining" : "serving");
    if (auto r = restarts_.find(id); r != restarts_.end()) engine->set_restarts(r->second);
    for (const engine::v1::RankInfo& r : entry.hello.ranks()) {
      v1::RankStatus* rank = engine->add_ranks();
      rank->set_rank(r.rank());
      rank->set_role(r.role() == engine::v1::ROLE_ATTENTION ? "attention"
                     : r.role() == engine::v1::ROLE_EXPERT  ? "expert"
                                                            : "unknown");
      rank->set_position(r.position());
      rank->set_resident_bytes(r.resident_bytes());
      rank->set_released_bytes(r.released_bytes());
      rank->set_host(r.host());
      rank->set_pid(r.pid());
      // Indexed by world rank; r.rank() is the engine's claim, so bound it here.
      const engine::v1::Heartbeat& hb = entry.heartbeat;
      if (r.rank() >= 0 && r.rank() < hb.blocked_fraction_size()) {
        rank->set_blocked_fraction(hb.blocked_fraction(r.rank()));
      }
    }
    const engine::v1::Heartbeat& hb = entry.heartbeat;
    const engine::v1::Occupancy& occupancy = hb.occupancy();
    engine->set_running_requests(occupancy.running_sequences());
    engine->set_kv_usage(occupancy.kv_budget_tokens() > 0
                             ? static_cast<double>(occupancy.kv_used_tokens()) /
                                   static_cast<double>(occupancy.kv_budget_tokens())
                             : 0.0);
    engine->set_measured_step_ms(hb.measured_step_ms());
    engine->set_modelled_step_ms(hb.modelled_step_ms());
    engine->set_measured_link_bytes_per_step(hb.measured_link_bytes_per_step());
    engine->set_modelled_link_bytes_per_step(hb.modelled_link_bytes_per_step());
    for (const auto& [layer, counts] : entry.expert_load) {
      std::vector<int64_t>& sum = load[layer];
      sum.resize(std::max(sum.size(), counts.size()), 0);
      for (size_t e = 0; e < counts.size(); ++e) sum[e] += counts[e];
    }
  }
  for (const auto& [id, entry] : engines_) {
    if (!entry.placement_summary.empty()) {
      status->set_placement_summary(engines_.size() == 1
                                        ? entry.placement_summary
                                        : absl::StrCat(status->placement_summary(), id, ":\n",
                                                       entry.placement_summary, "\n"));
    }
  }
  for (const auto& [layer, counts] : load) {
    v1::LayerExpertLoad* out = status->add_expert_load();
    out->set_layer(layer);
    out->mutable_tokens_per_expert()->Add(counts.begin(), counts.end());
  }
}

}  // namespace dsv4::coordinator
