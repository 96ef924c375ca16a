#include "engram_store/client.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "core/engram_rows.h"
#include "core/status_macros.h"
#include "engram_store/table_shards.h"
#include "grpcpp/grpcpp.h"
#include "rpc/security.h"
#include "rpc/status.h"

namespace dsv4::engram {

struct EngramClient::FetchState {
  struct PerLayer {
    std::vector<int64_t> slot;    // per requested row: its index in `unique`
    std::vector<int64_t> unique;  // distinct row ids
    std::string bytes;            // unique.size() × record_bytes: their records
    int pending = 0;              // calls not finished
    absl::Status status;
  };
  std::mutex mu;
  std::condition_variable done;
  std::vector<PerLayer> layers;
};

// One batched lookup of rows of one shard, re-sent to another replica on failure.
struct EngramClient::Call {
  // Keeps the client alive (its destructor waits) until this call is released. The last
  // reference is the completion callback of the final attempt, which gRPC destroys only
  // after its own last use of the call; declared first, so it goes after the contexts.
  std::shared_ptr<void> in_flight;
  std::shared_ptr<FetchState> fetch;
  int index = 0;  // Engram layer index
  int shard = 0;
  std::vector<int64_t> slots;  // indices into the layer's `unique`
  v1::LookupRequest request;
  v1::LookupResponse response;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;  // one per attempt
  std::vector<int> tried;
  grpc::Status last;
};

namespace {

uint64_t CacheKey(int index, int64_t row) {
  return (static_cast<uint64_t>(index) << 56) | static_cast<uint64_t>(row);
}

}  // namespace

class RemoteFetch : public EngramRowFetch {
 public:
  RemoteFetch(EngramClient* client, std::shared_ptr<EngramClient::FetchState> state)
      : client_(client), state_(std::move(state)) {}

  absl::Status Wait(int index, float* out) override {
    const auto start = std::chrono::steady_clock::now();
    EngramClient::FetchState::PerLayer& l = state_->layers[index];
    {
      std::unique_lock<std::mutex> lock(state_->mu);
      state_->done.wait(lock, [&] { return l.pending == 0; });
    }
    const int64_t stall = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
    client_->FinishFetchWait(stall, l.status.ok());
    RETURN_IF_ERROR(l.status);
    const EngramClient::Layer& layer = client_->layers_[index];
    const auto* records = reinterpret_cast<const uint8_t*>(l.bytes.data());
    for (size_t i = 0; i < l.slot.size(); ++i) {
      DequantizeEngramRecords(records + l.slot[i] * layer.record_bytes, 1, layer.head_dim,
                              out + i * layer.head_dim);
    }
    return absl::OkStatus();
  }

 private:
  EngramClient* client_;
  std::shared_ptr<EngramClient::FetchState> state_;
};

ClientOptions ClientOptions::FromCluster(const EngramSpec& spec) {
  ClientOptions o;
  o.servers = spec.servers;
  o.replication = spec.replication;
  return o;
}

absl::Status LoadClientSecurity(const EngramSpec& spec, ClientOptions* options) {
  ASSIGN_OR_RETURN(rpc::ClientSecurity security,
                   rpc::LoadClientSecurity(spec.tls_ca, spec.token_file));
  options->credentials = std::move(security.credentials);
  options->tls = !spec.tls_ca.empty();
  options->token = std::move(security.token);
  return absl::OkStatus();
}

EngramClient::EngramClient(const ModelConfig& config, const ClientOptions& options)
    : options_(options),
      plan_{static_cast<int>(options.servers.size()), options.replication},
      health_(options.servers.size()) {
  const EngramConfig& e = config.engram;
  for (size_t i = 0; i < e.layer_ids.size(); ++i) {
    layers_.push_back(
        {e.layer_ids[i], e.num_embeddings[i], e.head_dim, EngramRecordBytes(e.head_dim)});
  }
}

absl::StatusOr<std::unique_ptr<EngramClient>> EngramClient::Create(const ModelConfig& config,
                                                                   const ClientOptions& options) {
  if (!config.engram.enabled()) {
    return absl::InvalidArgumentError("the model config has no Engram layers");
  }
  if (config.engram.head_dim <= 0 || config.engram.head_dim % kEngramScaleBlock != 0 ||
      config.engram.num_embeddings.size() != config.engram.layer_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model config's Engram tables are not in the released format: engram_head_dim ",
        config.engram.head_dim, " (a multiple of ", kEngramScaleBlock, " needed), ",
        config.engram.num_embeddings.size(), " engram_num_embeddings for ",
        config.engram.layer_ids.size(), " layers"));
  }
  ShardPlan plan{static_cast<int>(options.servers.size()), options.replication};
  RETURN_IF_ERROR(plan.Validate());
  if (options.max_batch_rows < 1) {
    return absl::InvalidArgumentError("Engram client: max_batch_rows must be ≥ 1");
  }
  auto client = std::unique_ptr<EngramClient>(new EngramClient(config, options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  // Reconnect quickly to a node that comes back; the backoff decides when to use it.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  for (const std::string& address : options.servers) {
    client->channels_.push_back(grpc::CreateCustomChannel(
        address, options.credentials ? options.credentials : grpc::InsecureChannelCredentials(),
        args));
    client->stubs_.push_back(v1::EngramStore::NewStub(client->channels_.back()));
  }
  RETURN_IF_ERROR(client->Handshake());
  return client;
}

absl::Status EngramClient::Handshake() {
  std::vector<bool> known(layers_.size(), false);
  std::string unreachable;
  for (size_t i = 0; i < stubs_.size(); ++i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(options_.deadline));
    rpc::AddBearerToken(&context, options_.token);
    v1::StatsResponse stats;
    const grpc::Status s = stubs_[i]->Stats(&context, v1::StatsRequest(), &stats);
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {  // no replica would differ
      return absl::UnauthenticatedError(absl::StrCat(
          "Engram store ", options_.servers[i], " refused this client: ", s.error_message(),
          options_.token.empty() ? " (this client has no token: give the memory nodes' token "
                                   "file as engram.token_file or --engram_token_file)"
                                 : " (check engram.token_file / --engram_token_file)"));
    }
    if (!s.ok()) {  // a node may be down now; its replicas cover it
      absl::StrAppend(&unreachable, " ", options_.servers[i], " (", s.error_message(), ")");
      continue;
    }
    if (stats.server_index() != static_cast<int>(i) || stats.num_servers() != plan_.num_servers ||
        stats.replication() != plan_.replication) {
      return absl::FailedPreconditionError(
          absl::StrCat("Engram store ", options_.servers[i], " serves as server ",
                       stats.server_index(), " of ", stats.num_servers(), " with replication ",
                       stats.replication(), ", but the cluster config lists it as server ", i,
                       " of ", plan_.num_servers, " with replication ", plan_.replication));
    }
    for (const v1::TableShard& shard : stats.shards()) {
      auto layer = std::find_if(layers_.begin(), layers_.end(),
                                [&](const Layer& l) { return l.layer_id == shard.layer(); });
      if (layer == layers_.end() || layer->table_rows != shard.table_rows() ||
          layer->head_dim != shard.head_dim() || shard.format() != kEngramRecordFormat ||
          layer->record_bytes != shard.record_bytes()) {
        std::string layers;
        for (const Layer& l : layers_) {
          absl::StrAppend(&layers, layers.empty() ? "" : ", ", l.layer_id, " (", l.table_rows,
                          " rows)");
        }
        return absl::FailedPreconditionError(
            absl::StrCat("Engram store ", options_.servers[i], " serves layer ", shard.layer(),
                         " with ", shard.table_rows(), " rows of ", shard.head_dim(),
                         " values as \"", shard.format(), "\" records of ", shard.record_bytes(),
                         " B, but this model's config.json has Engram "
                         "layers ",
                         layers, " of ", layers_[0].head_dim, " values as \"", kEngramRecordFormat,
                         "\" records of ", layers_[0].record_bytes, " B (another checkpoint?)"));
      }
      known[layer - layers_.begin()] = true;
    }
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!known[i]) {
      return absl::UnavailableError(absl::StrCat(
          "no Engram store server described layer ", layers_[i].layer_id,
          "; unreachable:", unreachable,
          options_.tls ? " (TLS: the nodes' certificate must be signed by engram.tls.ca / "
                         "--engram_tls_ca and name the host dialled)"
                       : " (if the memory nodes serve TLS, set engram.tls.ca or --engram_tls_ca)"));
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<void> EngramClient::InFlightToken() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++in_flight_;
  }
  return std::shared_ptr<void>(nullptr, [this](void*) {
    std::lock_guard<std::mutex> lock(mu_);
    if (--in_flight_ == 0) idle_.notify_all();
  });
}

EngramClient::~EngramClient() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] { return in_flight_ == 0; });
}

std::unique_ptr<EngramRowFetch> EngramClient::Prefetch(std::vector<std::vector<int64_t>> rows) {
  auto state = std::make_shared<FetchState>();
  state->layers.resize(layers_.size());
  std::vector<std::shared_ptr<Call>> calls;
  uint64_t requested = 0, hits = 0;
  for (size_t index = 0; index < layers_.size() && index < rows.size(); ++index) {
    const Layer& layer = layers_[index];
    FetchState::PerLayer& l = state->layers[index];
    absl::flat_hash_map<int64_t, int64_t> slot_of;
    for (int64_t row : rows[index]) {
      auto [it, added] = slot_of.try_emplace(row, static_cast<int64_t>(l.unique.size()));
      if (added) l.unique.push_back(row);
      l.slot.push_back(it->second);
    }
    requested += rows[index].size();
    l.bytes.resize(l.unique.size() * layer.record_bytes);
    std::vector<std::vector<int64_t>> misses(plan_.num_servers);
    for (size_t u = 0; u < l.unique.size(); ++u) {
      const int64_t row = l.unique[u];
      if (row < 0 || row >= layer.table_rows) {
        l.status = absl::OutOfRangeError(absl::StrCat("Engram layer ", layer.layer_id, ": row ",
                                                      row, " outside [0, ", layer.table_rows, ")"));
        break;
      }
      if (CacheGet(static_cast<int>(index), row, l.bytes.data() + u * layer.record_bytes)) {
        ++hits;
      } else {
        misses[plan_.ShardOf(layer.table_rows, row)].push_back(static_cast<int64_t>(u));
      }
    }
    if (!l.status.ok()) continue;
    for (int shard = 0; shard < plan_.num_servers; ++shard) {
      const std::vector<int64_t>& m = misses[shard];
      for (size_t from = 0; from < m.size(); from += options_.max_batch_rows) {
        auto call = std::make_shared<Call>();
        call->in_flight = InFlightToken();
        call->fetch = state;
        call->index = static_cast<int>(index);
        call->shard = shard;
        const size_t to = std::min(m.size(), from + static_cast<size_t>(options_.max_batch_rows));
        call->slots.assign(m.begin() + from, m.begin() + to);
        call->request.set_layer(layer.layer_id);
        for (int64_t u : call->slots) call->request.add_rows(l.unique[u]);
        calls.push_back(std::move(call));
        ++l.pending;
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.fetches;
    stats_.rows_requested += requested;
    stats_.cache_hits += hits;
  }
  // Every layer's pending count is final before the first call can complete.
  for (std::shared_ptr<Call>& call : calls) Send(std::move(call));
  return std::make_unique<RemoteFetch>(this, std::move(state));
}

int EngramClient::PickServer(const Call& call) {
  std::lock_guard<std::mutex> lock(mu_);
  const absl::Time now = absl::Now();
  int fallback = -1;
  for (int server : plan_.Replicas(call.shard)) {
    if (std::find(call.tried.begin(), call.tried.end(), server) != call.tried.end()) continue;
    if (health_[server].avoid_until <= now) return server;
    if (fallback < 0) fallback = server;  // backed off, but better than giving up
  }
  return fallback;
}

void EngramClient::Send(std::shared_ptr<Call> call) {
  const int server = PickServer(*call);
  if (server < 0) {
    FetchState& f = *call->fetch;
    std::lock_guard<std::mutex> lock(f.mu);
    FetchState::PerLayer& l = f.layers[call->index];
    std::string tried;
    for (int s : call->tried)
      absl::StrAppend(&tried, tried.empty() ? "" : ", ", options_.servers[s]);
    l.status = absl::UnavailableError(
        absl::StrCat("Engram layer ", layers_[call->index].layer_id, " shard ", call->shard,
                     ": every replica failed (", tried,
                     "); last error: ", rpc::FromGrpc(call->last).ToString()));
    --l.pending;
    f.done.notify_all();
    return;
  }
  call->tried.push_back(server);
  call->response.Clear();
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(options_.deadline));
  rpc::AddBearerToken(context.get(), options_.token);
  grpc::ClientContext* ctx = context.get();
  call->contexts.push_back(std::move(context));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.rpcs;
    if (call->tried.size() > 1) ++stats_.retries;
  }
  v1::EngramStore::Stub* stub = stubs_[server].get();
  stub->async()->Lookup(ctx, &call->request, &call->response,
                        [this, call](grpc::Status status) { Done(call, status); });
}

void EngramClient::Done(std::shared_ptr<Call> call, const grpc::Status& status) {
  const int server = call->tried.back();
  const Layer& layer = layers_[call->index];
  grpc::Status s = status;
  if (s.ok() && (call->response.record_bytes() != layer.record_bytes ||
                 call->response.format() != kEngramRecordFormat ||
                 call->response.data().size() != call->slots.size() * layer.record_bytes)) {
    s = grpc::Status(
        grpc::StatusCode::INTERNAL,
        absl::StrCat("malformed response: ", call->response.data().size(), " bytes of ",
                     call->response.record_bytes(), "-byte \"", call->response.format(),
                     "\" records for ", call->slots.size(), " rows"));
  }
  if (s.ok()) {
    MarkSuccess(server);
    FetchState& f = *call->fetch;
    FetchState::PerLayer& l = f.layers[call->index];
    const char* data = call->response.data().data();
    for (size_t i = 0; i < call->slots.size(); ++i) {
      const int64_t u = call->slots[i];
      std::memcpy(l.bytes.data() + u * layer.record_bytes, data + i * layer.record_bytes,
                  layer.record_bytes);
      CachePut(call->index, l.unique[u], data + i * layer.record_bytes);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.rows_fetched += call->slots.size();
    }
    std::lock_guard<std::mutex> lock(f.mu);
    --l.pending;
    f.done.notify_all();
  } else {
    MarkFailure(server);
    call->last = s;
    Send(call);
  }
}

void EngramClient::MarkFailure(int server) {
  std::lock_guard<std::mutex> lock(mu_);
  Health& h = health_[server];
  ++h.failures;
  const absl::Duration wait =
      std::min(options_.max_backoff, options_.backoff * (1 << std::min(h.failures - 1, 20)));
  h.avoid_until = absl::Now() + wait;
}

void EngramClient::MarkSuccess(int server) {
  std::lock_guard<std::mutex> lock(mu_);
  health_[server] = Health();
}

void EngramClient::CachePut(int index, int64_t row, const char* bytes) {
  if (options_.cache_rows <= 0) return;
  const uint64_t key = CacheKey(index, row);
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = cache_.find(key); it != cache_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.emplace_front(key, std::string(bytes, layers_[index].record_bytes));
  cache_[key] = lru_.begin();
  if (static_cast<int64_t>(lru_.size()) > options_.cache_rows) {
    cache_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

bool EngramClient::CacheGet(int index, int64_t row, char* out) {
  if (options_.cache_rows <= 0) return false;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = cache_.find(CacheKey(index, row));
  if (it == cache_.end()) return false;
  lru_.splice(lru_.begin(), lru_, it->second);
  std::memcpy(out, it->second->second.data(), it->second->second.size());
  return true;
}

void EngramClient::FinishFetchWait(int64_t stall_ns, bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.waits;
  stats_.stall_ns += stall_ns;
  if (!ok) ++stats_.failures;
}

ClientStats EngramClient::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<std::unique_ptr<EngramClient>> ConnectEngram(const ModelConfig& config,
                                                            const EngramSpec& spec) {
  if (config.engram.layer_ids.empty() || !spec.remote()) return nullptr;
  ClientOptions options = ClientOptions::FromCluster(spec);
  RETURN_IF_ERROR(LoadClientSecurity(spec, &options));
  return EngramClient::Create(config, options);
}

std::string EngramReport(const EngramClient& client) {
  const ClientStats s = client.stats();
  // Hit rate over the unique rows each lookup needed: what the cache saved the memory nodes.
  const uint64_t unique = s.cache_hits + s.rows_fetched;
  return absl::StrFormat(
      "engram: %d lookups, %d rows from memory nodes in %d RPCs (%d retried on another "
      "replica), %d cache hits (%.1f%% hit rate), %d failed, %.3f s stalled",
      s.fetches, s.rows_fetched, s.rpcs, s.retries, s.cache_hits,
      unique ? 100.0 * s.cache_hits / unique : 0.0, s.failures, s.stall_ns * 1e-9);
}

}  // namespace dsv4::engram
