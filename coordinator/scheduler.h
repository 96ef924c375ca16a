// The coordinator's scheduler: admitted requests, the bounded queue in front of the
// engines, and which engine runs what. Engines batch continuously themselves (the engine's
// ServingPlanner); the scheduler keeps each engine's admitted-but-unfinished requests under
// its max_running and sends new ones to the engine running the fewest.
//
// No admitted request is lost: when an engine's control stream ends (crash, kill, missed
// heartbeats), every request it held goes back to the front of the queue, in admission
// order, and is re-admitted (to a restarted engine or another one) with resume_tokens = the
// tokens already generated; sampling is deterministic per (seed, draw), so the stream goes
// on where it was. Only SetUnavailable (engines failed for good) ends admitted requests
// early, with UNAVAILABLE and its reason.
//
// Idempotency: a client request_id belongs to the caller (API key) that sent it. A request
// whose (caller, request_id) is running, or finished less than `remember_finished` requests
// ago, is returned as is when its body digest matches (a retried Generate streams the same
// record) and refused with ALREADY_EXISTS when it does not; the same request_id from
// another caller is a request of its own. Thread-safe.
#ifndef DSV4_COORDINATOR_SCHEDULER_H_
#define DSV4_COORDINATOR_SCHEDULER_H_

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/engine_registry.h"
#include "coordinator/metrics.h"
#include "coordinator/request.h"
#include "core/tokenizer.h"
#include "proto/engine.pb.h"

namespace dsv4::coordinator {

struct SchedulerOptions {
  int max_queue = 256;           // requests waiting for an engine (coordinator.max_queue)
  int remember_finished = 1024;  // finished client request_ids kept for idempotent retries
};

// Who submitted a request and how a retry is recognised.
struct ClientRequestId {
  std::string caller;      // the API key's name; "" or "anonymous" without authentication
  std::string request_id;  // the client's request_id; empty = no idempotency
  std::string digest;      // of the request body without request_id (SHA-256)
};

class Scheduler {
 public:
  // The registry, tokenizer and metrics (may be null) must outlive the scheduler.
  Scheduler(const SchedulerOptions& options, EngineRegistry& registry, const Tokenizer& tokenizer,
            Metrics* metrics);
  ~Scheduler();

  // Admits a validated request (prompt already tokenized) under a coordinator-assigned id,
  // which is what engines see. With a known `client_request_id`, the existing record.
  // RESOURCE_EXHAUSTED when the queue is full; UNAVAILABLE when no engine can run it (none
  // connected or expected, or SetUnavailable was called).
  // ALREADY_EXISTS when the caller's request_id is known with another digest.
  absl::StatusOr<std::shared_ptr<Request>> Submit(GenerationSpec spec,
                                                  const ClientRequestId& client);
  // The same for an anonymous caller without a digest (tests).
  absl::StatusOr<std::shared_ptr<Request>> Submit(GenerationSpec spec,
                                                  const std::string& client_request_id) {
    return Submit(std::move(spec), ClientRequestId{"", client_request_id, ""});
  }
  // A client stopped reading `request` (it left, or its deadline passed). The request is
  // cancelled (its engine frees the sequence) once no reader is left; Submit and Attach
  // count readers.
  void Detach(const std::shared_ptr<Request>& request);

  // EngineControl events.
  void EngineConnected(const std::string& engine_id, int max_running);
  void OnTokens(const std::string& engine_id, const engine::v1::TokenEvent& event);
  void EngineLost(const std::string& engine_id);
  // Whether requests should wait for engines that are not connected yet (launched and
  // starting, or restarting). When false and none is connected, Submit is UNAVAILABLE.
  void SetEnginesExpected(bool expected);
  // Engines failed for good: queued and running requests end with `reason` (UNAVAILABLE),
  // and so does every later Submit.
  void SetUnavailable(const absl::Status& reason);

  int queue_depth() const;
  int running() const;  // admitted to an engine, not finished
  // Sets each engine's running_requests in `status` from the scheduler's own count (fresher
  // than the engine's last heartbeat).
  void FillRunning(v1::ClusterStatus* status) const;

 private:
  struct Engine {
    int max_running = 0;
    std::set<std::string> requests;  // coordinator ids
  };
  struct Entry {
    std::shared_ptr<Request> request;
    std::string engine;     // empty while queued
    std::string client_id;  // ClientKey of (caller, request_id); empty without request_id
    int readers = 1;
    bool client_left = false;
    // The engine was told to drop it (client left, stop string); the record is finished but
    // the engine holds a slot until it confirms, and a replay would be pointless.
    bool released = false;
  };

  void DispatchLoop();
  // Ends `id` (its engine already forgot it or never had it).
  void FinishLocked(const std::string& id, v1::FinishReason reason, absl::Status error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  EngineRegistry& registry_;
  const Tokenizer& tokenizer_;
  Metrics* const metrics_;

  mutable absl::Mutex mu_;
  std::map<std::string, Entry> requests_ ABSL_GUARDED_BY(mu_);  // by coordinator id
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Engine> engines_ ABSL_GUARDED_BY(mu_);
  struct Known {
    std::shared_ptr<Request> request;
    std::string digest;
  };
  std::map<std::string, Known> by_client_id_ ABSL_GUARDED_BY(mu_);  // by ClientKey
  std::deque<std::string> finished_client_ids_ ABSL_GUARDED_BY(mu_);
  bool engines_expected_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status unavailable_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread dispatcher_;
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_SCHEDULER_H_
