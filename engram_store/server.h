// The memory-node gRPC service (proto/engram.proto): batched row lookups (unary and
// server-streaming) from the TableShards this node holds, answered with records (a row's
// F8_E4M3 values then its E8M0 scales, EngramRecordBytes each), Stats, and the standard
// grpc.health.v1 health service. Bad requests are refused with INVALID_ARGUMENT or
// RESOURCE_EXHAUSTED naming the limit; no input crashes the server.
//
// The rows are the model's weights, so a node can require TLS (ServerOptions::tls_cert and
// tls_key) and a bearer token (ServerOptions::token, "authorization: Bearer <token>"
// metadata) on Lookup, StreamLookup and Stats; a call without the right token gets
// UNAUTHENTICATED, never a hint of the expected value. Health checks stay open.
#ifndef DSV4_ENGRAM_STORE_SERVER_H_
#define DSV4_ENGRAM_STORE_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/cluster_config.h"
#include "engram_store/table_shards.h"
#include "grpcpp/grpcpp.h"
#include "proto/engram.grpc.pb.h"

namespace dsv4::engram {

struct ServerOptions {
  int64_t max_batch_rows = 65536;     // larger requests get RESOURCE_EXHAUSTED
  int64_t max_chunk_bytes = 1 << 20;  // record data per StreamLookup response
  std::string tls_cert, tls_key;      // PEM files; both empty = plaintext
  std::string token;                  // required bearer token; empty = none
};

// Options' tls_cert, tls_key and token from a cluster's engram section (the token read from
// engram.token_file); errors name the file.
absl::Status LoadServerSecurity(const EngramSpec& spec, ServerOptions* options);

// Lookup, the hot path, runs on the callback API (answered inline on gRPC's event threads,
// no hand-off to a sync worker pool); StreamLookup and Stats are synchronous.
class EngramStoreService final
    : public v1::EngramStore::WithCallbackMethod_Lookup<v1::EngramStore::Service> {
 public:
  EngramStoreService(std::unique_ptr<TableShards> shards, const ServerOptions& options);

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::LookupResponse* response) override;
  grpc::Status StreamLookup(grpc::ServerContext* context, const v1::LookupRequest* request,
                            grpc::ServerWriter<v1::LookupResponse>* writer) override;
  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest* request,
                     v1::StatsResponse* response) override;

 private:
  // The table a request reads, or the status refusing it.
  absl::StatusOr<const TableShards::Table*> Check(const v1::LookupRequest& request);
  // OK when the call carries the token (or none is required); UNAUTHENTICATED otherwise.
  grpc::Status Authenticate(const grpc::ServerContextBase& context);
  // Copies the records of request rows [from, to) into response->data.
  void Fill(const TableShards::Table& table, const v1::LookupRequest& request, int64_t from,
            int64_t to, v1::LookupResponse* response);

  std::unique_ptr<TableShards> shards_;
  ServerOptions options_;
  std::atomic<uint64_t> lookups_{0}, rows_{0}, bytes_{0}, rejected_{0};
};

// Keeps glibc malloc from serving each multi-megabyte message with fresh mmap'ed (and
// page-faulted) memory and from trimming the heap after every response: raises the mmap
// and trim thresholds for the whole process. Call once at startup in processes that move
// large lookups (the store's main, attention ranks, the benchmark); it at least doubles
// loopback throughput for responses over ~128 KiB.
void TuneMallocForLargeMessages();

// A running server: the service on `address` ("host:port"; port 0 picks a free port).
class EngramStoreServer {
 public:
  static absl::StatusOr<std::unique_ptr<EngramStoreServer>> Start(
      std::unique_ptr<TableShards> shards, const std::string& address,
      const ServerOptions& options = {});
  ~EngramStoreServer();

  int port() const { return port_; }
  std::string address() const { return address_; }  // host:bound port
  void Wait() { server_->Wait(); }
  // Stops accepting calls and cancels those in flight (deadline 0): the client sees what
  // it sees when a node dies.
  void Shutdown();

 private:
  std::unique_ptr<EngramStoreService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
};

}  // namespace dsv4::engram

#endif  // DSV4_ENGRAM_STORE_SERVER_H_
