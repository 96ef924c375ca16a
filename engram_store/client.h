// The attention ranks' client of the memory nodes: an EngramRowSource whose Prefetch
// sends every Engram layer's row lookups at once, asynchronously (gRPC callback API), so
// they overlap the layers before the first Engram layer; the forward blocks only in
// EngramRowFetch::Wait at an Engram layer, and that blocked time is counted as stall.
//
// - Rows travel and are cached as the servers' records (a row's F8_E4M3 values, then its
//   E8M0 scales: 264 B for d_e = 256, half of BF16) and are dequantised to fp32 only in
//   Wait (DequantizeEngramRecords).
// - Rows are deduplicated per layer and served from a bounded LRU cache of hot records
//   when possible (n-gram frequencies are Zipf-like).
// - Misses go to the shard's replicas (engram_store/shard_plan.h), primary first. A
//   replica that fails or misses the deadline is retried on the next one and avoided for
//   an exponentially growing backoff; only when every replica of a shard failed does Wait
//   return an error (naming the shard and the last error).
// - Create asks the servers for their tables (Stats) and checks them against the model
//   config (layer ids, engram_num_embeddings, engram_head_dim, record format), so a client
//   never mixes rows of another checkpoint.
// - Security: TLS trusting ClientOptions::credentials' CA and a bearer token, as the
//   memory nodes require (engram.tls.ca and engram.token_file of the cluster YAML). A node
//   refusing the token, or a TLS mismatch, fails Create with a message saying what to set.
#ifndef DSV4_ENGRAM_STORE_CLIENT_H_
#define DSV4_ENGRAM_STORE_CLIENT_H_

#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/cluster_config.h"
#include "core/engram_rows.h"
#include "core/model_config.h"
#include "engram_store/shard_plan.h"
#include "grpcpp/security/credentials.h"
#include "proto/engram.grpc.pb.h"

namespace dsv4::engram {

struct ClientOptions {
  std::vector<std::string> servers;  // host:port, in shard-plan order
  int replication = 1;
  absl::Duration deadline = absl::Milliseconds(500);  // per lookup RPC
  int64_t cache_rows = 1 << 16;                     // LRU capacity in records; 0 disables the cache
  int64_t max_batch_rows = 16384;                   // larger lookups are split
  absl::Duration backoff = absl::Milliseconds(50);  // doubled per consecutive failure
  absl::Duration max_backoff = absl::Seconds(10);
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: plaintext
  bool tls = false;                                       // credentials are TLS (for messages)
  std::string token;                                      // bearer token; empty: none

  // Servers and replication of `spec`; no files read (see LoadClientSecurity).
  static ClientOptions FromCluster(const EngramSpec& spec);
};

// Options' credentials (TLS trusting spec.tls_ca when set) and token (spec.token_file's).
// Errors name the file.
absl::Status LoadClientSecurity(const EngramSpec& spec, ClientOptions* options);

// Counters for the coordinator's metrics. Monotonic since Create.
struct ClientStats {
  uint64_t fetches = 0;         // Prefetch calls
  uint64_t rows_requested = 0;  // row ids asked for (before dedup and cache)
  uint64_t cache_hits = 0;      // unique rows served from the cache
  uint64_t rows_fetched = 0;    // unique rows received from servers
  uint64_t rpcs = 0;            // lookup RPCs sent, retries included
  uint64_t retries = 0;         // RPCs re-sent to another replica after a failure
  uint64_t failures = 0;        // Waits that returned an error
  uint64_t waits = 0;
  int64_t stall_ns = 0;  // time the forward spent blocked in Wait
};

class EngramClient : public EngramRowSource {
 public:
  static absl::StatusOr<std::unique_ptr<EngramClient>> Create(const ModelConfig& config,
                                                              const ClientOptions& options);
  ~EngramClient() override;  // waits for RPCs still in flight

  std::unique_ptr<EngramRowFetch> Prefetch(std::vector<std::vector<int64_t>> rows) override;
  ClientStats stats() const;

 private:
  struct Layer {
    int layer_id;
    int64_t table_rows;    // engram_num_embeddings entry
    int64_t head_dim;      // d_e
    int64_t record_bytes;  // EngramRecordBytes(d_e); the servers' Stats must agree
  };
  struct FetchState;  // one Prefetch's rows, shared with its calls
  struct Call;        // one batched lookup of one shard

  EngramClient(const ModelConfig& config, const ClientOptions& options);
  absl::Status Handshake();
  void Send(std::shared_ptr<Call> call);
  void Done(std::shared_ptr<Call> call, const grpc::Status& status);
  // Replicas of a shard ordered for this attempt: untried, not backed off, primary first.
  int PickServer(const Call& call);
  void MarkFailure(int server);
  void MarkSuccess(int server);
  void CachePut(int index, int64_t row, const char* bytes);
  bool CacheGet(int index, int64_t row, char* out);
  void FinishFetchWait(int64_t stall_ns, bool ok);

  friend class RemoteFetch;
  ClientOptions options_;
  ShardPlan plan_;
  std::vector<Layer> layers_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::EngramStore::Stub>> stubs_;

  mutable std::mutex mu_;  // health, cache and stats
  struct Health {
    int failures = 0;
    absl::Time avoid_until = absl::InfinitePast();
  };
  std::vector<Health> health_;
  std::list<std::pair<uint64_t, std::string>> lru_;  // records, most recent first
  absl::flat_hash_map<uint64_t, std::list<std::pair<uint64_t, std::string>>::iterator> cache_;
  ClientStats stats_;
  // A token per call; the destructor waits until every token is released.
  std::shared_ptr<void> InFlightToken();
  std::condition_variable idle_;
  int64_t in_flight_ = 0;  // calls gRPC has not released yet
};

// The client of the Engram memory nodes in `spec` for a model with Engram layers, to pass
// as ModelOptions::engram_rows; null (tables read from the checkpoint) when the model has no
// Engram layers or `spec` lists no servers.
absl::StatusOr<std::unique_ptr<EngramClient>> ConnectEngram(const ModelConfig& config,
                                                            const EngramSpec& spec);
// "engram: ..." — what the client did (RPCs, failovers, cache, stall), for the run's report.
std::string EngramReport(const EngramClient& client);

}  // namespace dsv4::engram

#endif  // DSV4_ENGRAM_STORE_CLIENT_H_
