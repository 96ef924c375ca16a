#include "coordinator/metrics.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace dsv4::coordinator {
namespace {

using prometheus::Histogram;

// Latencies a user sees: a first token within tens of milliseconds (short prompt, idle
// cluster) up to a minute (long prompt behind a queue).
const Histogram::BucketBoundaries kTimeToFirstTokenBuckets = {
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 20, 30, 60};
// Decode steps: around a millisecond for a tiny model up to seconds for a loaded V4-Pro.
const Histogram::BucketBoundaries kTimePerOutputTokenBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5};
// Whole requests: sub-second up to long generations (32768 tokens at tens of tokens/s).
const Histogram::BucketBoundaries kRequestDurationBuckets = {
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800};
// The coordinator's own per-token cost, which should stay far below a decode step: from 10 µs
// (a hop through a queue) up to 100 ms (something is wrong).
const Histogram::BucketBoundaries kCoordinatorOverheadBuckets = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025,  0.005,    0.01,    0.025,  0.05,    0.1};

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

Histogram& SingleHistogram(prometheus::Registry& registry, const std::string& name,
                           const std::string& help, const Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(CounterFamily(*registry_, "dsv4_requests_total",
                              "Generate requests finished, by final status.")),
      time_to_first_token_(SingleHistogram(
          *registry_, "dsv4_time_to_first_token_seconds",
          "Time from a request's arrival to its first generated token.", kTimeToFirstTokenBuckets)),
      time_per_output_token_(SingleHistogram(
          *registry_, "dsv4_time_per_output_token_seconds",
          "Time between consecutive generated tokens of a request.", kTimePerOutputTokenBuckets)),
      request_duration_(SingleHistogram(*registry_, "dsv4_request_duration_seconds",
                                        "Time from a request's arrival to its final response.",
                                        kRequestDurationBuckets)),
      coordinator_overhead_(
          SingleHistogram(*registry_, "dsv4_coordinator_overhead_seconds",
                          "Time from an engine's token event to the write on the client's stream.",
                          kCoordinatorOverheadBuckets)),
      generated_tokens_(
          CounterFamily(*registry_, "dsv4_generated_tokens_total", "Tokens generated for clients.")
              .Add({})),
      prompt_tokens_(
          CounterFamily(*registry_, "dsv4_prompt_tokens_total", "Prompt tokens admitted.").Add({})),
      queue_depth_(
          GaugeFamily(*registry_, "dsv4_queue_depth", "Requests waiting for an engine.").Add({})),
      running_requests_(
          GaugeFamily(*registry_, "dsv4_running_requests", "Requests currently running on engines.")
              .Add({})),
      kv_usage_(GaugeFamily(*registry_, "dsv4_kv_usage_ratio",
                            "Fraction of an engine's KV cache in use (0 to 1).")),
      engram_stall_(GaugeFamily(*registry_, "dsv4_engram_stall_seconds",
                                "Total time an engine has waited on Engram lookups, as "
                                "reported by the engine.")),
      engine_restarts_(CounterFamily(*registry_, "dsv4_engine_restarts_total",
                                     "Times an engine has restarted.")),
      expert_imbalance_(GaugeFamily(*registry_, "dsv4_expert_load_imbalance",
                                    "Per MoE layer, max over mean of the tokens routed to each "
                                    "expert in the last report (1 = balanced).")),
      expert_routed_tokens_(CounterFamily(*registry_, "dsv4_expert_routed_tokens_total",
                                          "Token-to-expert routings over all layers.")
                                .Add({})),
      key_requests_(CounterFamily(*registry_, "dsv4_key_requests_total",
                                  "Generate calls, by the caller's API key name.")),
      key_tokens_(CounterFamily(*registry_, "dsv4_key_tokens_total",
                                "Prompt and generated tokens of finished requests, by the "
                                "caller's API key name.")) {
  // Every status series exists from the start, so rate() and alerts see zeros rather than
  // missing series.
  for (const char* status : kStatuses) {
    requests_by_status_.emplace(status, &requests_.Add({{"status", status}}));
  }
  SetCallers({});  // the anonymous caller's series
}

Metrics::~Metrics() = default;

void Metrics::SetCallers(const std::vector<std::string>& names) {
  absl::MutexLock lock(&callers_mu_);
  std::vector<std::string> all = names;
  all.push_back(kAnonymousCaller);
  for (const std::string& name : all) {
    if (callers_.count(name) != 0) continue;
    callers_.emplace(name,
                     CallerCounters{&key_requests_.Add({{"key", name}}),
                                    &key_tokens_.Add({{"key", name}, {"kind", "prompt"}}),
                                    &key_tokens_.Add({{"key", name}, {"kind", "generated"}})});
  }
}

void Metrics::CallerRequest(absl::string_view caller) {
  absl::MutexLock lock(&callers_mu_);
  auto it = callers_.find(caller);
  if (it == callers_.end()) it = callers_.find(kAnonymousCaller);
  it->second.requests->Increment();
}

void Metrics::AddCallerTokens(absl::string_view caller, int64_t prompt, int64_t generated) {
  absl::MutexLock lock(&callers_mu_);
  auto it = callers_.find(caller);
  if (it == callers_.end()) it = callers_.find(kAnonymousCaller);
  if (prompt > 0) it->second.prompt_tokens->Increment(static_cast<double>(prompt));
  if (generated > 0) it->second.generated_tokens->Increment(static_cast<double>(generated));
}

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen) {
  std::unique_ptr<Metrics> metrics(new Metrics());
  if (listen.empty()) return metrics;
  // CivetWeb (under prometheus::Exposer) reports a failed bind by throwing.
  try {
    metrics->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", listen, ": ", e.what(),
                     " (expected host:port with a local address and a free port)"));
  }
  metrics->exposer_->RegisterCollectable(metrics->registry_);
  const std::vector<int> ports = metrics->exposer_->GetListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen));
  }
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? "0.0.0.0" : listen.substr(0, colon);
  metrics->address_ = absl::StrCat(host, ":", ports.front());
  return metrics;
}

void Metrics::RequestFinished(absl::string_view status) {
  auto it = requests_by_status_.find(status);
  if (it == requests_by_status_.end()) it = requests_by_status_.find("other");
  it->second->Increment();
}

void Metrics::RequestFinished(absl::StatusCode code) {
  RequestFinished(absl::AsciiStrToLower(absl::StatusCodeToString(code)));
}

void Metrics::ObserveTimeToFirstToken(double seconds) { time_to_first_token_.Observe(seconds); }

void Metrics::ObserveTimePerOutputToken(double seconds) { time_per_output_token_.Observe(seconds); }

void Metrics::ObserveEndToEnd(double seconds) { request_duration_.Observe(seconds); }

void Metrics::ObserveCoordinatorOverhead(double seconds) { coordinator_overhead_.Observe(seconds); }

void Metrics::AddGeneratedTokens(int64_t n) {
  if (n > 0) generated_tokens_.Increment(static_cast<double>(n));
}

void Metrics::AddPromptTokens(int64_t n) {
  if (n > 0) prompt_tokens_.Increment(static_cast<double>(n));
}

void Metrics::SetQueueDepth(int n) { queue_depth_.Set(n); }

void Metrics::SetRunningRequests(int n) { running_requests_.Set(n); }

void Metrics::SetKvUsage(const std::string& engine, double fraction) {
  kv_usage_.Add({{"engine", engine}}).Set(fraction);
}

void Metrics::SetEngramStallSeconds(const std::string& engine, double seconds) {
  engram_stall_.Add({{"engine", engine}}).Set(seconds);
}

void Metrics::EngineRestarted(const std::string& engine) {
  engine_restarts_.Add({{"engine", engine}}).Increment();
}

void Metrics::RemoveEngine(const std::string& engine) {
  const prometheus::Labels labels = {{"engine", engine}};
  for (prometheus::Family<prometheus::Gauge>* family : {&kv_usage_, &engram_stall_}) {
    // Add returns the existing series; Has keeps it from creating one just to remove it.
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
}

void Metrics::RecordExpertLoad(int layer, const std::vector<int64_t>& tokens_per_expert) {
  if (layer < 0 || tokens_per_expert.empty()) return;
  int64_t total = 0;
  int64_t max = 0;
  for (const int64_t tokens : tokens_per_expert) {
    if (tokens <= 0) continue;
    total += tokens;
    max = std::max(max, tokens);
  }
  if (total == 0) return;
  const double mean = static_cast<double>(total) / static_cast<double>(tokens_per_expert.size());
  expert_imbalance_.Add({{"layer", absl::StrCat(layer)}}).Set(static_cast<double>(max) / mean);
  expert_routed_tokens_.Increment(static_cast<double>(total));
}

std::string Metrics::Scrape() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace dsv4::coordinator
