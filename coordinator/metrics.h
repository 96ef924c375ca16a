// The coordinator's Prometheus metrics: request outcomes and latencies, token throughput,
// queue and engine state, expert load. Served as text exposition on an HTTP /metrics
// endpoint when a listen address is given, and always available through Scrape() (tests,
// `dsv4 status`).
//
// Every series has a bounded label set, so a long-running coordinator's scrape stays small:
// status is one of a fixed list, engine is one per connected engine, key is one per
// configured API key (its name, never its token) plus "anonymous", and expert load is
// aggregated per layer (never per expert: V4-Pro has 61 layers × 384 experts).
//
// Thread-safe: every method may be called concurrently.
#ifndef DSV4_COORDINATOR_METRICS_H_
#define DSV4_COORDINATOR_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace dsv4::coordinator {

class Metrics {
 public:
  // The values RequestFinished records as label status; anything else counts as "other".
  static constexpr const char* kStatuses[] = {
      "ok",          "cancelled",       "invalid_argument",  "resource_exhausted",
      "unavailable", "unauthenticated", "deadline_exceeded", "internal",
      "other"};

  // A registry plus, when `listen` is non-empty ("host:port", port 0 = any free port), an
  // HTTP exposer serving /metrics. UNAVAILABLE naming the address when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen);
  // Stops the exposer, which can take up to 2 s: CivetWeb's listener notices the stop only
  // between its 2 s polls.
  ~Metrics();

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // "host:boundport" of the exposer; empty without one.
  std::string address() const { return address_; }

  // Counts one request by its final status (dsv4_requests_total{status}).
  void RequestFinished(absl::string_view status);
  // The same, labelled by the code's lower-case name ("ok", "invalid_argument", ...).
  void RequestFinished(absl::StatusCode code);

  void ObserveTimeToFirstToken(double seconds);
  void ObserveTimePerOutputToken(double seconds);
  void ObserveEndToEnd(double seconds);
  // Time from an engine's token event to the write on the client's stream.
  void ObserveCoordinatorOverhead(double seconds);

  // Counters; tokens/s is their rate(). Negative values are ignored.
  void AddGeneratedTokens(int64_t n);
  void AddPromptTokens(int64_t n);

  // Per caller (label key): the API key names SetCallers was given, "anonymous" for calls
  // without authentication or that failed it, and for any other name. Counts Generate calls
  // (dsv4_key_requests_total{key}) and the prompt and generated tokens of their finished
  // requests (dsv4_key_tokens_total{key,kind="prompt"|"generated"}).
  static constexpr char kAnonymousCaller[] = "anonymous";
  void SetCallers(const std::vector<std::string>& names);
  void CallerRequest(absl::string_view caller);
  void AddCallerTokens(absl::string_view caller, int64_t prompt, int64_t generated);

  void SetQueueDepth(int n);
  void SetRunningRequests(int n);

  // Per engine (label engine).
  void SetKvUsage(const std::string& engine, double fraction);
  // The engine's own running total of Engram stall time, hence a gauge.
  void SetEngramStallSeconds(const std::string& engine, double seconds);
  void EngineRestarted(const std::string& engine);
  // Drops a departed engine's gauges so they do not report stale values forever. Its
  // restart counter stays: counters must not go backwards when the engine returns.
  void RemoveEngine(const std::string& engine);

  // `tokens_per_expert`: tokens routed to each expert of `layer` since the last report.
  // Sets dsv4_expert_load_imbalance{layer} to max/mean (1 = perfectly balanced, number of
  // experts = everything on one expert) and adds the tokens to
  // dsv4_expert_routed_tokens_total. A report with no routed tokens leaves the layer's
  // imbalance unchanged (max/mean is undefined); negative counts are treated as 0 and a
  // negative layer is ignored.
  void RecordExpertLoad(int layer, const std::vector<int64_t>& tokens_per_expert);

  // Prometheus text exposition of every metric.
  std::string Scrape() const;

 private:
  Metrics();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;

  prometheus::Family<prometheus::Counter>& requests_;
  std::map<std::string, prometheus::Counter*, std::less<>> requests_by_status_;
  prometheus::Histogram& time_to_first_token_;
  prometheus::Histogram& time_per_output_token_;
  prometheus::Histogram& request_duration_;
  prometheus::Histogram& coordinator_overhead_;
  prometheus::Counter& generated_tokens_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& running_requests_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Family<prometheus::Gauge>& engram_stall_;
  prometheus::Family<prometheus::Counter>& engine_restarts_;
  prometheus::Family<prometheus::Gauge>& expert_imbalance_;
  prometheus::Counter& expert_routed_tokens_;
  prometheus::Family<prometheus::Counter>& key_requests_;
  prometheus::Family<prometheus::Counter>& key_tokens_;
  struct CallerCounters {
    prometheus::Counter* requests;
    prometheus::Counter* prompt_tokens;
    prometheus::Counter* generated_tokens;
  };
  // Series are created by SetCallers only (at startup), so the set stays bounded.
  mutable absl::Mutex callers_mu_;
  std::map<std::string, CallerCounters, std::less<>> callers_ ABSL_GUARDED_BY(callers_mu_);
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_METRICS_H_
