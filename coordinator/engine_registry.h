// The engines connected to this coordinator (one entry per live EngineControl stream): what
// each said in its Hello, its latest Heartbeat, and a way to send it CoordinatorMessages.
// GetClusterStatus and the admin service read it; the scheduler sends admissions and
// cancellations through it. Thread-safe.
#ifndef DSV4_COORDINATOR_ENGINE_REGISTRY_H_
#define DSV4_COORDINATOR_ENGINE_REGISTRY_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/sync_stream.h"
#include "proto/engine.pb.h"
#include "proto/inference.pb.h"

namespace dsv4::coordinator {

using EngineStream =
    grpc::ServerReaderWriterInterface<engine::v1::CoordinatorMessage, engine::v1::EngineMessage>;

// The sending half of one engine's stream. gRPC allows one Write at a time next to the
// stream's reader, so writes are serialised here. The Welcome goes first (Open); Close
// (called by the stream's handler before it returns) makes later sends fail instead of
// touching a finished stream.
class EngineConnection {
 public:
  // `context` is the stream's server context, used to cancel the stream.
  EngineConnection(grpc::ServerContext* context, EngineStream* stream)
      : context_(context), stream_(stream) {}
  // Sends the Welcome, after which Send works.
  absl::Status Open(const engine::v1::CoordinatorMessage& welcome);
  // UNAVAILABLE before Open (the engine is still connecting) and once the stream is closed
  // or broken.
  absl::Status Send(const engine::v1::CoordinatorMessage& message);
  void Close();
  // Ends the stream from the coordinator's side (the engine sees CANCELLED); no-op once
  // closed.
  void Cancel();

 private:
  absl::Status Write(const engine::v1::CoordinatorMessage& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  grpc::ServerContext* const context_;
  EngineStream* stream_ ABSL_GUARDED_BY(mu_);
  bool open_ ABSL_GUARDED_BY(mu_) = false;
};

class EngineRegistry {
 public:
  // Registers a connected engine. An id reserved for a launch (Reserve) is taken only with
  // that launch's nonce (PERMISSION_DENIED otherwise); with it, a connection still holding
  // the id (a previous launch's stream) is cancelled and awaited (UNAVAILABLE if it lingers
  // past `evict_timeout`). Other ids: ALREADY_EXISTS when one with the same id is connected.
  absl::Status Add(const engine::v1::Hello& hello, std::shared_ptr<EngineConnection> connection,
                   absl::Duration evict_timeout = absl::Seconds(5));
  // Binds `engine_id` to the launch with `nonce` (a new one for every launch; the launcher
  // passes it to the engine out of band). A connection holding the id with another nonce
  // (an engine of an earlier launch) is cancelled.
  void Reserve(const std::string& engine_id, const std::string& nonce);
  // Whether `engine_id` is reserved for a launch.
  bool Reserved(const std::string& engine_id) const;
  // Records the latest load report of a registered engine (ignored for unknown ids); its
  // expert load adds up over the engine's life.
  void RecordHeartbeat(const std::string& engine_id, const engine::v1::Heartbeat& heartbeat);
  // Replaces the occupancy of the engine's last heartbeat with a fresher one.
  void RecordOccupancy(const std::string& engine_id, const engine::v1::Occupancy& occupancy);
  // Cancels the streams of engines silent (no Hello or Heartbeat) for longer than
  // `max_silence`, as of `now`; returns their ids. Their handlers then remove them.
  std::vector<std::string> CancelSilent(absl::Duration max_silence, absl::Time now);
  // Removes the engine when `connection` is the one registered under its id.
  void Remove(const std::string& engine_id, const EngineConnection* connection);
  // Sends to one engine: NOT_FOUND for an unknown id, UNAVAILABLE when its stream is gone.
  // A Drain also marks the engine "draining" (no new admissions).
  absl::Status Send(const std::string& engine_id, const engine::v1::CoordinatorMessage& message);

  int size() const;
  std::vector<std::string> Ids() const;
  bool Has(const std::string& engine_id) const;
  // The ranks (host, pid) a registered engine reported in its Hello.
  std::vector<std::pair<std::string, int64_t>> RankProcesses(const std::string& engine_id) const;
  // Registered, its stream open, and not draining: may be sent new requests.
  bool Accepting(const std::string& engine_id) const;
  // The expert load an engine reported since it connected, per layer; NOT_FOUND for an
  // unknown engine.
  absl::StatusOr<std::vector<engine::v1::LayerExpertLoad>> ExpertLoad(
      const std::string& engine_id) const;
  // An engine applied a Rebalance (its new placement summary shows in FillStatus).
  void RecordRebalanced(const std::string& engine_id, const engine::v1::Rebalanced& rebalanced);
  // Rebalances the engine applied so far (0 for unknown engines).
  int RebalanceCount(const std::string& engine_id) const;
  // Waits until the engine applied more than `count` rebalances: its latest Rebalanced.
  // UNAVAILABLE when the engine left, DEADLINE_EXCEEDED after `timeout`.
  absl::StatusOr<engine::v1::Rebalanced> WaitRebalanced(const std::string& engine_id, int count,
                                                        absl::Duration timeout) const;
  // Engine restarts by id (set by the supervisor), shown in FillStatus.
  void SetRestarts(const std::string& engine_id, int restarts);
  // Fills `status->engines` (sorted by id) and the expert load summed over engines and
  // heartbeats.
  void FillStatus(v1::ClusterStatus* status) const;

 private:
  struct Entry {
    engine::v1::Hello hello;
    engine::v1::Heartbeat heartbeat;
    std::map<int, std::vector<int64_t>> expert_load;  // layer → tokens per expert, cumulative
    std::shared_ptr<EngineConnection> connection;
    bool draining = false;
    absl::Time last_seen;
    std::string placement_summary;
    int rebalances = 0;
    engine::v1::Rebalanced rebalanced;  // the latest
    std::string nonce;                  // the launch nonce it connected with
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> engines_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> restarts_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> nonces_ ABSL_GUARDED_BY(mu_);  // reserved id → nonce
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_ENGINE_REGISTRY_H_
