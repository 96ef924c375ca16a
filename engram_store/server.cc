#include "engram_store/server.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/status_macros.h"
#include "grpcpp/health_check_service_interface.h"
#include "rpc/security.h"
#include "rpc/status.h"

namespace dsv4::engram {
namespace {

std::string Ranges(const TableShards::Table& t) {
  std::string out;
  for (const auto& [begin, end] : t.held) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", "[", begin, ", ", end, ")");
  }
  return out;
}

}  // namespace

absl::Status LoadServerSecurity(const EngramSpec& spec, ServerOptions* options) {
  options->tls_cert = spec.tls_cert;
  options->tls_key = spec.tls_key;
  options->token.clear();
  if (!spec.token_file.empty()) {
    absl::StatusOr<std::string> token = rpc::ReadTokenFile(spec.token_file);
    if (absl::IsNotFound(token.status())) {
      return absl::NotFoundError(absl::StrCat(
          token.status().message(), " (engram.token_file; create one with: (umask 077; openssl ",
          "rand -hex 32 > ", spec.token_file, "))"));
    }
    RETURN_IF_ERROR(token.status());
    options->token = *std::move(token);
  }
  return absl::OkStatus();
}

// rpc::CheckBearerToken takes the synchronous API's context; Lookup runs on the callback
// API, so the same check is made here on the base class's metadata.
grpc::Status EngramStoreService::Authenticate(const grpc::ServerContextBase& context) {
  if (options_.token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  const absl::string_view value = it == metadata.end()
                                      ? absl::string_view()
                                      : absl::string_view(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";  // the scheme is case-insensitive
  grpc::Status refused;
  if (value.size() < kBearer.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
    refused = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                           "this Engram store requires a bearer token: send 'authorization: "
                           "Bearer <token>'");
  } else if (!rpc::ConstantTimeEquals(absl::StripAsciiWhitespace(value.substr(kBearer.size())),
                                      options_.token)) {
    refused = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                           "invalid bearer token for this Engram store");
  }
  if (!refused.ok()) rejected_.fetch_add(1, std::memory_order_relaxed);
  return refused;
}

void TuneMallocForLargeMessages() {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

EngramStoreService::EngramStoreService(std::unique_ptr<TableShards> shards,
                                       const ServerOptions& options)
    : shards_(std::move(shards)), options_(options) {}

absl::StatusOr<const TableShards::Table*> EngramStoreService::Check(
    const v1::LookupRequest& request) {
  const TableShards::Table* table = shards_->Find(request.layer());
  absl::Status refused;
  if (table == nullptr) {
    std::string layers;
    for (const TableShards::Table& t : shards_->tables()) {
      absl::StrAppend(&layers, layers.empty() ? "" : ", ", t.layer);
    }
    refused = absl::InvalidArgumentError(absl::StrCat(
        "layer ", request.layer(), " has no Engram table (Engram layers: ", layers, ")"));
  } else if (request.rows_size() > options_.max_batch_rows) {
    refused = absl::ResourceExhaustedError(absl::StrCat("batch of ", request.rows_size(),
                                                        " rows exceeds the limit of ",
                                                        options_.max_batch_rows, " rows"));
  } else {
    for (int i = 0; i < request.rows_size(); ++i) {
      const int64_t row = request.rows(i);
      if (!table->Holds(row)) {
        refused = absl::InvalidArgumentError(absl::StrCat(
            "row ", row, " (request index ", i, ") of layer ", request.layer(),
            " is not served here: this server holds rows ", Ranges(*table), " of ", table->rows));
        break;
      }
    }
  }
  if (!refused.ok()) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    return refused;
  }
  return table;
}

void EngramStoreService::Fill(const TableShards::Table& table, const v1::LookupRequest& request,
                              int64_t from, int64_t to, v1::LookupResponse* response) {
  response->set_layer(table.layer);
  response->set_format(kEngramRecordFormat);
  response->set_record_bytes(static_cast<int32_t>(table.record_bytes));
  response->set_first_index(from);
  std::string* data = response->mutable_data();
  data->reserve((to - from) * table.record_bytes);  // appended, not zero-filled first
  for (int64_t i = from; i < to; ++i) table.AppendRecord(request.rows(static_cast<int>(i)), data);
  rows_.fetch_add(to - from, std::memory_order_relaxed);
  bytes_.fetch_add(data->size(), std::memory_order_relaxed);
}

grpc::ServerUnaryReactor* EngramStoreService::Lookup(grpc::CallbackServerContext* context,
                                                     const v1::LookupRequest* request,
                                                     v1::LookupResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) {
    reactor->Finish(auth);
    return reactor;
  }
  absl::StatusOr<const TableShards::Table*> table = Check(*request);
  if (!table.ok()) {
    reactor->Finish(rpc::ToGrpc(table.status()));
    return reactor;
  }
  Fill(**table, *request, 0, request->rows_size(), response);
  lookups_.fetch_add(1, std::memory_order_relaxed);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::Status EngramStoreService::StreamLookup(grpc::ServerContext* context,
                                              const v1::LookupRequest* request,
                                              grpc::ServerWriter<v1::LookupResponse>* writer) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  absl::StatusOr<const TableShards::Table*> table = Check(*request);
  if (!table.ok()) return rpc::ToGrpc(table.status());
  const int64_t per_chunk = std::max<int64_t>(1, options_.max_chunk_bytes / (*table)->record_bytes);
  for (int64_t from = 0; from < request->rows_size(); from += per_chunk) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    v1::LookupResponse chunk;
    Fill(**table, *request, from, std::min<int64_t>(request->rows_size(), from + per_chunk),
         &chunk);
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
  }
  lookups_.fetch_add(1, std::memory_order_relaxed);
  return grpc::Status::OK;
}

grpc::Status EngramStoreService::Stats(grpc::ServerContext* context, const v1::StatsRequest*,
                                       v1::StatsResponse* response) {
  if (grpc::Status auth = Authenticate(*context); !auth.ok()) return auth;
  const TableShardOptions& o = shards_->options();
  response->set_server_index(o.server_index);
  response->set_num_servers(o.plan.num_servers);
  response->set_replication(o.plan.replication);
  for (const TableShards::Table& t : shards_->tables()) {
    for (const auto& [begin, end] : t.held) {
      v1::TableShard* s = response->add_shards();
      s->set_layer(t.layer);
      s->set_row_begin(begin);
      s->set_row_end(end);
      s->set_table_rows(t.rows);
      s->set_head_dim(static_cast<int32_t>(t.head_dim));
      s->set_format(kEngramRecordFormat);
      s->set_record_bytes(static_cast<int32_t>(t.record_bytes));
    }
  }
  response->set_max_batch_rows(options_.max_batch_rows);
  response->set_resident_bytes(shards_->held_bytes());
  response->set_resident_value_bytes(shards_->held_value_bytes());
  response->set_resident_scale_bytes(shards_->held_scale_bytes());
  response->set_mlocked(o.mlock);
  response->set_lookups(lookups_.load());
  response->set_rows_served(rows_.load());
  response->set_bytes_served(bytes_.load());
  response->set_rejected(rejected_.load());
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<EngramStoreServer>> EngramStoreServer::Start(
    std::unique_ptr<TableShards> shards, const std::string& address, const ServerOptions& options) {
  if (options.max_batch_rows < 1 || options.max_chunk_bytes < 1) {
    return absl::InvalidArgumentError(
        "Engram store: max_batch_rows and max_chunk_bytes must be ≥ 1");
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      rpc::MakeServerCredentials(options.tls_cert, options.tls_key);
  if (!credentials.ok()) {
    return absl::Status(credentials.status().code(),
                        absl::StrCat("Engram store: ", credentials.status().message()));
  }
  auto server = std::unique_ptr<EngramStoreServer>(new EngramStoreServer());
  server->service_ = std::make_unique<EngramStoreService>(std::move(shards), options);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, *credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  // A full batch of ids must fit: 10 bytes per varint row id, plus framing.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(INT32_MAX, options.max_batch_rows * 10 + 4096)));
  builder.SetMaxSendMessageSize(-1);
  // Large responses: a wide HTTP/2 window avoids flow-control round trips on fast links.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("Engram store: cannot listen on ", address));
  }
  server->server_->GetHealthCheckService()->SetServingStatus(true);
  server->address_ = absl::StrCat(address.substr(0, address.rfind(':')), ":", server->port_);
  return server;
}

EngramStoreServer::~EngramStoreServer() { Shutdown(); }

void EngramStoreServer::Shutdown() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
}

}  // namespace dsv4::engram
