#include "dispatch/dispatcher.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/status_macros.h"

namespace dsv4 {
namespace {

// ---- Wire format: the only code that knows how a row of d floats is encoded. ----

int64_t WireRowBytes(int64_t d) { return d * static_cast<int64_t>(sizeof(float)); }

void EncodeRow(const float* row, int64_t d, std::byte* wire) {
  std::memcpy(wire, row, WireRowBytes(d));
}

const float* RowInWire(const std::byte* wire) { return reinterpret_cast<const float*>(wire); }
float* RowInWire(std::byte* wire) { return reinterpret_cast<float*>(wire); }

// row = 0 + wire: the first term of a sum from zero (+0 + −0 is +0).
void DecodeRowPlusZero(const std::byte* wire, int64_t d, float* row) {
  const float* values = reinterpret_cast<const float*>(wire);
  for (int64_t i = 0; i < d; ++i) row[i] = 0.0f + values[i];
}

void DecodeAddRow(const std::byte* wire, int64_t d, float* row) {
  const float* values = reinterpret_cast<const float*>(wire);
  for (int64_t i = 0; i < d; ++i) row[i] += values[i];
}

// ---- Dispatch record header: int32 source, int32 destination, k × (int32 slot, fp32 weight).

int64_t HeaderBytes(int k) { return 8 + 8 * static_cast<int64_t>(k); }

struct SlotWeight {
  int32_t slot;
  float weight;
};

int32_t ReadInt(const std::byte* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

int32_t RecordSource(const std::byte* record) { return ReadInt(record); }
int32_t RecordDest(const std::byte* record) { return ReadInt(record + 4); }
SlotWeight RecordPair(const std::byte* record, int j) {
  SlotWeight pair;
  std::memcpy(&pair, record + 8 + 8 * j, sizeof(pair));
  return pair;
}

void WriteHeader(int32_t source, int32_t dest, absl::Span<const SlotWeight> pairs, int k,
                 std::byte* record) {
  std::memcpy(record, &source, 4);
  std::memcpy(record + 4, &dest, 4);
  std::memcpy(record + 8, pairs.data(), pairs.size() * sizeof(SlotWeight));
  const SlotWeight pad{-1, 0.0f};
  for (int j = static_cast<int>(pairs.size()); j < k; ++j) {
    std::memcpy(record + 8 + 8 * j, &pad, sizeof(pad));
  }
}

// Buffers grow by half again at least, so that sizes varying from layer to layer settle.
int64_t GrownCapacity(int64_t needed, int64_t capacity) {
  return std::max(needed, capacity + capacity / 2);
}

// A grow-only byte buffer, reused by the exchanges of one micro-batch: fresh pages would
// cost a page fault each on first touch, which is as slow as the copy itself.
class Buffer {
 public:
  std::byte* Reserve(int64_t bytes) {
    if (bytes > capacity_) {
      capacity_ = GrownCapacity(bytes, capacity_);
      data_ = std::make_unique_for_overwrite<std::byte[]>(capacity_);
    }
    return data_.get();
  }
  std::byte* get() const { return data_.get(); }

 private:
  std::unique_ptr<std::byte[]> data_;
  int64_t capacity_ = 0;
};

// Exclusive prefix sum.
std::vector<int> Displacements(const std::vector<int>& counts) {
  std::vector<int> displs(counts.size(), 0);
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), 0);
  return displs;
}

absl::Status MpiError(int rc, int rank, absl::string_view what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return absl::InternalError(
      absl::StrCat(what, " failed on rank ", rank, ": ", absl::string_view(text, len)));
}

// One exchange stage (bulk flat has one, hierarchical two; low latency uses stage 0's
// counts and buffers). Counts and displacements are in records (dispatch) or rows (combine)
// per rank; combine runs a stage backwards, so its sends use recv_counts and its receives
// send_counts.
struct Stage {
  std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
  // Send position → the record it carries: an origin record (stage 0) or a record the
  // previous stage received.
  std::vector<int32_t> send_from;
  int64_t num_send = 0;
  int64_t num_recv = 0;
  Buffer send, recv;            // dispatch records
  Buffer back_send, back_recv;  // combine rows, by recv position / by send position
};

// Waiting spins on MPI_Testall like MPI_Wait does, and yields the core now and then: a
// yield costs more than a small exchange, but ranks may share cores (oversubscribed).
void YieldNow(int spins) {
  if (spins % 64 == 0) std::this_thread::yield();
}

// Low-latency messages start with an 8-byte count: records in the whole block (dispatch;
// −1 vetoes the exchange) or rows that follow (combine; −1 aborts it).
constexpr int64_t kBlockHeader = 8;
constexpr int kBlockTag = 1, kOverflowTag = 2, kCombineTag = 3;

int64_t ReadCount(const std::byte* p) {
  int64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
void WriteCount(int64_t v, std::byte* p) { std::memcpy(p, &v, sizeof(v)); }

// kDispatched: the dispatch exchange completed; kBatched: the records were listed for the
// expert; kCombined: the combine exchange completed; kDone: FinishCombine returned;
// kFailed: an error ended the exchange.
enum class Phase { kDispatching, kDispatched, kBatched, kCombining, kCombined, kDone, kFailed };
// kCounts/kPayload: bulk; kBlocks/kOverflow: low-latency dispatch (its combine is one step).
enum class Step { kCounts, kPayload, kBlocks, kOverflow };

// Groups items by hop rank (item order kept within a rank): fills the stage's send counts,
// displacements and send_from.
void GroupByHop(absl::Span<const int32_t> items, absl::Span<const int> hops, int num_ranks,
                Stage* stage) {
  stage->send_counts.assign(num_ranks, 0);
  for (int hop : hops) ++stage->send_counts[hop];
  stage->send_displs = Displacements(stage->send_counts);
  std::vector<int> cursor = stage->send_displs;
  stage->num_send = static_cast<int64_t>(items.size());
  stage->send_from.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) stage->send_from[cursor[hops[i]]++] = items[i];
}

}  // namespace

// A micro-batch's stages and buffers, held by the Dispatcher and lent to one handle at a time.
struct DispatchWorkspace {
  std::vector<Stage> stages;
  // Low latency: each rank's block (header + capacity records) as received, and the
  // records past the capacity, per source rank.
  Buffer blocks;
  std::vector<Buffer> overflow;
  bool busy = false;
};

// A record delivered to this rank, where it lies and where its combine row goes.
struct Delivered {
  const std::byte* record;
  std::byte* row;
};

struct DispatchHandle::State {
  Dispatcher* dispatcher = nullptr;
  int micro_batch = 0;
  MPI_Comm comm = MPI_COMM_NULL;
  ExchangeProtocol protocol = ExchangeProtocol::kBulk;
  Phase phase = Phase::kDispatching;
  Step step = Step::kCounts;
  int stage = 0;
  std::vector<MPI_Request> requests;       // the current step's, all pending until it ends
  DispatchWorkspace* workspace = nullptr;  // null once the exchange ended
  absl::Status status;  // sticky: why the handle failed, or an invalid local input

  // Token side: origin records in token order, destinations ascending within a token.
  int64_t tokens = 0;
  std::vector<int32_t> origin_token;

  // Expert side: records that reached this rank, in source rank order.
  std::vector<Delivered> delivered;
  bool dispatch_finished = false;  // FinishDispatch returned

  ExchangeTraffic traffic;

  std::vector<Stage>& stages() { return workspace->stages; }
  bool in_flight() const { return phase == Phase::kDispatching || phase == Phase::kCombining; }
  // Returns the workspace to the micro-batch once nothing is in flight.
  void Release() {
    if (workspace != nullptr) workspace->busy = false;
    workspace = nullptr;
  }
  absl::Status Fail(absl::Status error) {
    phase = Phase::kFailed;
    status = error;
    // A collective cannot be cancelled, and MPI may still write into the buffers.
    if (!requests.empty()) {
      MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
      requests.clear();
    }
    Release();
    return error;
  }
  ~State();
};

// Runs the in-flight exchanges of one Dispatcher while its caller computes.
class ProgressThread {
 public:
  explicit ProgressThread(Dispatcher* dispatcher)
      : dispatcher_(dispatcher), thread_([this] { Loop(); }) {}
  ~ProgressThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  // Something went in flight.
  void Wake() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      work_ = true;
    }
    wake_.notify_one();
  }

 private:
  // Polls every kInterval while exchanges are in flight, sleeps otherwise: often enough to
  // answer a rendezvous or post the next stage within a few microseconds of a layer's
  // compute, rarely enough to leave the cores to the compute threads.
  static constexpr std::chrono::microseconds kInterval{20};

  void Loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [this] { return stop_ || work_; });
        if (stop_) return;
      }
      {
        std::lock_guard<std::mutex> lock(dispatcher_->mu_);
        dispatcher_->AdvanceAll();
        if (dispatcher_->in_flight_.empty()) {
          // Under the dispatcher's lock: whatever goes in flight next calls Wake after this.
          std::lock_guard<std::mutex> own(mu_);
          work_ = false;
          continue;
        }
      }
      std::this_thread::sleep_for(kInterval);
    }
  }

  Dispatcher* dispatcher_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool work_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

DispatchHandle::State::~State() {
  if (dispatcher == nullptr) return;
  std::lock_guard<std::mutex> lock(dispatcher->mu_);
  auto& list = dispatcher->in_flight_;
  list.erase(std::remove(list.begin(), list.end(), this), list.end());
  if (!requests.empty()) {
    MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
  }
  Release();
}

LinkTraffic& LinkTraffic::operator+=(const LinkTraffic& other) {
  for (int c = 0; c < kNumLinkClasses; ++c) {
    bytes[c] += other.bytes[c];
    messages[c] += other.messages[c];
    copies[c] += other.copies[c];
  }
  return *this;
}

LinkTraffic LinkTraffic::operator-(const LinkTraffic& other) const {
  LinkTraffic out;
  for (int c = 0; c < kNumLinkClasses; ++c) {
    out.bytes[c] = bytes[c] - other.bytes[c];
    out.messages[c] = messages[c] - other.messages[c];
    out.copies[c] = copies[c] - other.copies[c];
  }
  return out;
}

DispatchHandle::DispatchHandle() = default;
DispatchHandle::DispatchHandle(std::unique_ptr<State> state) : state_(std::move(state)) {}
DispatchHandle::DispatchHandle(DispatchHandle&&) noexcept = default;
DispatchHandle& DispatchHandle::operator=(DispatchHandle&&) noexcept = default;
DispatchHandle::~DispatchHandle() = default;

int DispatchHandle::micro_batch() const { return state_ ? state_->micro_batch : -1; }

const ExchangeTraffic& DispatchHandle::traffic() const {
  static const ExchangeTraffic kNone;
  return state_ ? state_->traffic : kNone;
}

absl::StatusOr<std::unique_ptr<Dispatcher>> Dispatcher::Create(MPI_Comm comm,
                                                               const Topology& topology,
                                                               std::vector<int> rank_of_slot,
                                                               const DispatcherOptions& options) {
  int rank = 0, size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  if (options.hidden <= 0 || options.top_k <= 0 || options.micro_batches <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dispatcher options need hidden, top_k and micro_batches > 0, got ",
                     options.hidden, ", ", options.top_k, ", ", options.micro_batches));
  }
  if (options.low_latency_tokens < 0 || options.low_latency_capacity < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("low_latency_tokens and low_latency_capacity must be ≥ 0, got ",
                     options.low_latency_tokens, " and ", options.low_latency_capacity));
  }
  if (options.progress_thread) {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided != MPI_THREAD_MULTIPLE) {
      return absl::FailedPreconditionError(
          "the dispatcher's progress thread needs MPI initialised with MPI_THREAD_MULTIPLE "
          "(MPI_Init_thread); set engine.progress: calls to run without it");
    }
  }
  if (topology.num_ranks() != size) {
    return absl::InvalidArgumentError(absl::StrCat("the topology maps ", topology.num_ranks(),
                                                   " ranks but the communicator has ", size));
  }
  auto d = std::unique_ptr<Dispatcher>(new Dispatcher());
  d->topology_ = std::make_unique<Topology>(topology);
  d->options_ = options;
  d->rank_ = rank;
  d->num_ranks_ = size;
  d->num_stages_ =
      options.mode == DispatchMode::kHierarchical && topology.num_supernodes() > 1 ? 2 : 1;
  d->capacity_ =
      std::max<int64_t>(1, options.low_latency_capacity > 0 ? options.low_latency_capacity
                                                            : options.low_latency_tokens);
  d->local_index_of_slot_.assign(rank_of_slot.size(), -1);
  d->holds_slots_.assign(size, false);
  for (int slot = 0; slot < static_cast<int>(rank_of_slot.size()); ++slot) {
    const int r = rank_of_slot[slot];
    if (r < 0 || r >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", slot, " is placed on rank ", r, ", not in [0, ", size, ")"));
    }
    d->holds_slots_[r] = true;
    if (r == rank) {
      d->local_index_of_slot_[slot] = static_cast<int>(d->local_slots_.size());
      d->local_slots_.push_back(slot);
    }
  }
  d->rank_of_slot_ = std::move(rank_of_slot);
  d->record_bytes_ = HeaderBytes(options.top_k) + WireRowBytes(options.hidden);
  d->row_bytes_ = WireRowBytes(options.hidden);
  if (d->record_bytes_ * d->capacity_ + kBlockHeader > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("a low-latency block of ", d->capacity_,
                                                   " records of hidden size ", options.hidden,
                                                   " exceeds 2 GiB: lower low_latency_capacity"));
  }

  int rc = MPI_Type_contiguous(static_cast<int>(d->record_bytes_), MPI_BYTE, &d->record_type_);
  if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&d->record_type_);
  if (rc == MPI_SUCCESS) {
    rc = MPI_Type_contiguous(static_cast<int>(d->row_bytes_), MPI_BYTE, &d->row_type_);
  }
  if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&d->row_type_);
  if (rc != MPI_SUCCESS) return MpiError(rc, rank, "MPI_Type_contiguous");
  for (int m = 0; m < options.micro_batches; ++m) {
    MPI_Comm dup;
    rc = MPI_Comm_dup(comm, &dup);
    if (rc != MPI_SUCCESS) return MpiError(rc, rank, "MPI_Comm_dup");
    d->comms_.push_back(dup);
    d->workspaces_.push_back(std::make_unique<DispatchWorkspace>());
    d->workspaces_.back()->stages.resize(d->num_stages_);
    d->workspaces_.back()->overflow.resize(size);
    // Report failures as Status instead of aborting the job.
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  }
  if (options.progress_thread) d->progress_ = std::make_unique<ProgressThread>(d.get());
  return d;
}

Dispatcher::~Dispatcher() {
  progress_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm& c : comms_) MPI_Comm_free(&c);
  if (record_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&record_type_);
  if (row_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&row_type_);
}

ExchangeProtocol Dispatcher::ProtocolFor(int64_t max_tokens) const {
  return options_.low_latency_tokens > 0 && max_tokens <= options_.low_latency_tokens
             ? ExchangeProtocol::kLowLatency
             : ExchangeProtocol::kBulk;
}

int Dispatcher::NextHop(int stage, int dest) const {
  if (num_stages_ == 1 || stage == 1) return dest;
  const int here = topology_->rank_position(rank_).supernode;
  if (topology_->rank_position(dest).supernode == here) return dest;
  return topology_->PeerInSupernode(dest, here).value_or(dest);
}

void Dispatcher::Account(const std::vector<int>& counts, int64_t item_bytes, int64_t header_bytes,
                         LinkTraffic* traffic) const {
  for (int q = 0; q < num_ranks_; ++q) {
    if (q == rank_ || (counts[q] == 0 && header_bytes == 0)) continue;
    const int c = static_cast<int>(topology_->LinkBetween(rank_, q));
    traffic->bytes[c] += counts[q] * item_bytes + header_bytes;
    traffic->copies[c] += counts[q];
    ++traffic->messages[c];
  }
}

absl::Status Dispatcher::PostCounts(DispatchHandle::State& s) {
  Stage& st = s.stages()[s.stage];
  st.recv_counts.assign(num_ranks_, 0);
  s.step = Step::kCounts;
  s.requests.assign(1, MPI_REQUEST_NULL);
  const int rc = MPI_Ialltoall(st.send_counts.data(), 1, MPI_INT, st.recv_counts.data(), 1, MPI_INT,
                               s.comm, &s.requests[0]);
  if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Ialltoall (counts)");
  return absl::OkStatus();
}

absl::Status Dispatcher::PostPayload(DispatchHandle::State& s, bool forward) {
  Stage& st = s.stages()[s.stage];
  s.step = Step::kPayload;
  // Combine runs the stage backwards: rows go where the records came from.
  const std::byte* send = forward ? st.send.get() : st.back_send.get();
  std::byte* recv = forward ? st.recv.get() : st.back_recv.get();
  const std::vector<int>& scounts = forward ? st.send_counts : st.recv_counts;
  const std::vector<int>& sdispls = forward ? st.send_displs : st.recv_displs;
  const std::vector<int>& rcounts = forward ? st.recv_counts : st.send_counts;
  const std::vector<int>& rdispls = forward ? st.recv_displs : st.send_displs;
  const MPI_Datatype type = forward ? record_type_ : row_type_;
  Account(scounts, forward ? record_bytes_ : row_bytes_, 0,
          forward ? &s.traffic.dispatch : &s.traffic.combine);
  s.requests.assign(1, MPI_REQUEST_NULL);
  const int rc = MPI_Ialltoallv(send, scounts.data(), sdispls.data(), type, recv, rcounts.data(),
                                rdispls.data(), type, s.comm, &s.requests[0]);
  if (rc != MPI_SUCCESS) {
    return MpiError(rc, rank_,
                    absl::StrCat("MPI_Ialltoallv",
                                 forward ? " (dispatch stage " : " (combine stage ", s.stage, ")"));
  }
  return absl::OkStatus();
}

// Stage 0's send buffer holds, per slot-holding rank q in rank order, a block header and
// q's records: the first message carries the header and up to `capacity_` records, a
// second one (kOverflowTag) the rest. A rank holding slots receives every rank's block.
absl::Status Dispatcher::PostLowLatencyDispatch(DispatchHandle::State& s) {
  Stage& st = s.stages()[0];
  DispatchWorkspace& w = *s.workspace;
  s.step = Step::kBlocks;
  s.requests.clear();
  const int64_t block_bytes = kBlockHeader + capacity_ * record_bytes_;
  if (!local_slots_.empty()) {
    w.blocks.Reserve(num_ranks_ * block_bytes);
    for (int q = 0; q < num_ranks_; ++q) {
      s.requests.emplace_back();
      const int rc = MPI_Irecv(w.blocks.get() + q * block_bytes, static_cast<int>(block_bytes),
                               MPI_BYTE, q, kBlockTag, s.comm, &s.requests.back());
      if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Irecv (low-latency block)");
    }
  }
  for (int q = 0; q < num_ranks_; ++q) {
    if (!holds_slots_[q]) continue;
    std::byte* block = st.send.get() + st.send_displs[q] * record_bytes_ + q * kBlockHeader;
    const int64_t n = st.send_counts[q] < 0 ? 0 : st.send_counts[q];
    const int64_t first = std::min(n, capacity_);
    s.requests.emplace_back();
    int rc = MPI_Isend(block, static_cast<int>(kBlockHeader + first * record_bytes_), MPI_BYTE, q,
                       kBlockTag, s.comm, &s.requests.back());
    if (rc == MPI_SUCCESS && n > first) {
      s.requests.emplace_back();
      rc = MPI_Isend(block + kBlockHeader + first * record_bytes_,
                     static_cast<int>((n - first) * record_bytes_), MPI_BYTE, q, kOverflowTag,
                     s.comm, &s.requests.back());
    }
    if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Isend (low-latency block)");
    if (q != rank_) {
      const int c = static_cast<int>(topology_->LinkBetween(rank_, q));
      s.traffic.dispatch.bytes[c] += kBlockHeader + n * record_bytes_;
      s.traffic.dispatch.copies[c] += n;
      s.traffic.dispatch.messages[c] += n > first ? 2 : 1;
    }
  }
  return absl::OkStatus();
}

// Reads the block headers: posts a receive for each block's records past the capacity.
absl::Status Dispatcher::PostLowLatencyOverflow(DispatchHandle::State& s) {
  Stage& st = s.stages()[0];
  DispatchWorkspace& w = *s.workspace;
  s.step = Step::kOverflow;
  s.requests.clear();
  st.recv_counts.assign(num_ranks_, 0);
  if (local_slots_.empty()) return absl::OkStatus();
  const int64_t block_bytes = kBlockHeader + capacity_ * record_bytes_;
  int veto = -1;
  for (int q = 0; q < num_ranks_; ++q) {
    const int64_t n = ReadCount(w.blocks.get() + q * block_bytes);
    if (n < 0) {
      veto = q;
      continue;
    }
    st.recv_counts[q] = static_cast<int>(n);
    if (n <= capacity_) continue;
    w.overflow[q].Reserve((n - capacity_) * record_bytes_);
    s.requests.emplace_back();
    const int rc = MPI_Irecv(w.overflow[q].get(), static_cast<int>((n - capacity_) * record_bytes_),
                             MPI_BYTE, q, kOverflowTag, s.comm, &s.requests.back());
    if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Irecv (low-latency overflow)");
  }
  if (veto >= 0 && s.status.ok()) {
    s.status = absl::AbortedError(absl::StrCat("dispatch aborted: rank ", veto,
                                               " rejected its input (see that rank's error)"));
  }
  return absl::OkStatus();
}

// Rows go back point to point, exact size, behind a header (−1 when the exchange aborted).
absl::Status Dispatcher::PostLowLatencyCombine(DispatchHandle::State& s) {
  Stage& st = s.stages()[0];
  s.requests.clear();
  const bool aborted = !s.status.ok();
  // Every rank that sent this rank records gets its rows: by recv position, behind one
  // header per source (recv_displs counts rows; headers take the source's index).
  for (int q = 0; q < num_ranks_; ++q) {
    if (st.recv_counts[q] <= 0) continue;
    std::byte* block = st.back_send.get() + st.recv_displs[q] * row_bytes_ + q * kBlockHeader;
    WriteCount(aborted ? -1 : st.recv_counts[q], block);
    const int64_t bytes = kBlockHeader + (aborted ? 0 : st.recv_counts[q] * row_bytes_);
    s.requests.emplace_back();
    const int rc = MPI_Isend(block, static_cast<int>(bytes), MPI_BYTE, q, kCombineTag, s.comm,
                             &s.requests.back());
    if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Isend (low-latency combine)");
    if (q != rank_) {
      const int c = static_cast<int>(topology_->LinkBetween(rank_, q));
      s.traffic.combine.bytes[c] += bytes;
      s.traffic.combine.copies[c] += aborted ? 0 : st.recv_counts[q];
      ++s.traffic.combine.messages[c];
    }
  }
  for (int q = 0; q < num_ranks_; ++q) {
    if (st.send_counts[q] <= 0) continue;
    std::byte* block = st.back_recv.get() + st.send_displs[q] * row_bytes_ + q * kBlockHeader;
    s.requests.emplace_back();
    const int rc = MPI_Irecv(block, static_cast<int>(kBlockHeader + st.send_counts[q] * row_bytes_),
                             MPI_BYTE, q, kCombineTag, s.comm, &s.requests.back());
    if (rc != MPI_SUCCESS) return MpiError(rc, rank_, "MPI_Irecv (low-latency combine)");
  }
  return absl::OkStatus();
}

void Dispatcher::ForwardRecords(DispatchHandle::State& s) {
  const Stage& from = s.stages()[s.stage];
  Stage& to = s.stages()[s.stage + 1];
  std::vector<int32_t> items;
  std::vector<int> hops;
  for (int64_t j = 0; j < from.num_recv; ++j) {
    const int dest = RecordDest(from.recv.get() + j * record_bytes_);
    if (dest == rank_) continue;  // delivered here
    items.push_back(static_cast<int32_t>(j));
    hops.push_back(NextHop(s.stage + 1, dest));
  }
  GroupByHop(items, hops, num_ranks_, &to);
  to.send.Reserve(to.num_send * record_bytes_);
  for (int64_t p = 0; p < to.num_send; ++p) {
    std::memcpy(to.send.get() + p * record_bytes_,
                from.recv.get() + to.send_from[p] * record_bytes_, record_bytes_);
  }
}

void Dispatcher::CollectDelivered(DispatchHandle::State& s) {
  std::vector<std::pair<int, Delivered>> arrived;  // (source, record)
  if (s.protocol == ExchangeProtocol::kLowLatency) {
    Stage& st = s.stages()[0];
    DispatchWorkspace& w = *s.workspace;
    st.recv_displs = Displacements(st.recv_counts);
    st.num_recv = std::accumulate(st.recv_counts.begin(), st.recv_counts.end(), int64_t{0});
    st.back_send.Reserve(st.num_recv * row_bytes_ + num_ranks_ * kBlockHeader);
    st.back_recv.Reserve(st.num_send * row_bytes_ + num_ranks_ * kBlockHeader);
    const int64_t block_bytes = kBlockHeader + capacity_ * record_bytes_;
    for (int q = 0; q < num_ranks_; ++q) {
      std::byte* rows =
          st.back_send.get() + st.recv_displs[q] * row_bytes_ + (q + 1) * kBlockHeader;
      for (int64_t i = 0; i < st.recv_counts[q]; ++i) {
        const std::byte* record =
            i < capacity_ ? w.blocks.get() + q * block_bytes + kBlockHeader + i * record_bytes_
                          : w.overflow[q].get() + (i - capacity_) * record_bytes_;
        arrived.push_back({q, {record, rows + i * row_bytes_}});
      }
    }
  } else {
    for (Stage& st : s.stages()) {
      st.back_send.Reserve(st.num_recv * row_bytes_);
      st.back_recv.Reserve(st.num_send * row_bytes_);
    }
    for (int stage = 0; stage < num_stages_; ++stage) {
      Stage& st = s.stages()[stage];
      for (int64_t j = 0; j < st.num_recv; ++j) {
        const std::byte* record = st.recv.get() + j * record_bytes_;
        if (RecordDest(record) != rank_) continue;
        arrived.push_back({RecordSource(record), {record, st.back_send.get() + j * row_bytes_}});
      }
    }
  }
  // By source rank: each source's records to one destination travel one path and keep their
  // order, so this order does not depend on the mode, the protocol or timing.
  std::stable_sort(arrived.begin(), arrived.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  s.delivered.clear();
  for (const auto& [source, d] : arrived) s.delivered.push_back(d);
}

absl::StatusOr<bool> Dispatcher::Advance(DispatchHandle::State& s) {
  while (true) {
    if (s.phase == Phase::kFailed) return s.status;
    if (!s.in_flight()) return true;
    if (!s.requests.empty()) {
      int done = 0;
      const int rc = MPI_Testall(static_cast<int>(s.requests.size()), s.requests.data(), &done,
                                 MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) return s.Fail(MpiError(rc, rank_, "MPI_Testall"));
      if (!done) return false;
      s.requests.clear();
    }
    absl::Status posted;
    const bool low_latency = s.protocol == ExchangeProtocol::kLowLatency;
    if (s.phase == Phase::kDispatching && low_latency) {
      if (s.step == Step::kBlocks) {
        posted = PostLowLatencyOverflow(s);
      } else if (s.status.ok()) {
        s.phase = Phase::kDispatched;
      } else if (!local_slots_.empty()) {
        // A veto: the ranks waiting for rows from here learn it from the combine header.
        absl::Status abort = s.status;
        CollectDelivered(s);
        posted = PostLowLatencyCombine(s);
        if (posted.ok()) {
          MPI_Waitall(static_cast<int>(s.requests.size()), s.requests.data(), MPI_STATUSES_IGNORE);
          s.requests.clear();
        }
        return s.Fail(posted.ok() ? abort : posted);
      } else {
        return s.Fail(s.status);
      }
    } else if (s.phase == Phase::kDispatching) {
      Stage& st = s.stages()[s.stage];
      if (s.step == Step::kCounts) {
        // A negative count is a rank's veto: its input was invalid (see Start).
        if (!s.status.ok()) return s.Fail(s.status);
        for (int q = 0; q < num_ranks_; ++q) {
          if (st.recv_counts[q] < 0) {
            return s.Fail(absl::AbortedError(absl::StrCat(
                "dispatch aborted: rank ", q, " rejected its input (see that rank's error)")));
          }
        }
        st.recv_displs = Displacements(st.recv_counts);
        st.num_recv = std::accumulate(st.recv_counts.begin(), st.recv_counts.end(), int64_t{0});
        st.recv.Reserve(st.num_recv * record_bytes_);
        posted = PostPayload(s, /*forward=*/true);
      } else if (s.stage + 1 == num_stages_) {
        s.phase = Phase::kDispatched;
      } else {
        ForwardRecords(s);
        ++s.stage;
        posted = PostCounts(s);
      }
    } else if (low_latency) {  // combining: the rows are back
      const Stage& st = s.stages()[0];
      for (int q = 0; q < num_ranks_; ++q) {
        if (st.send_counts[q] <= 0) continue;
        if (ReadCount(st.back_recv.get() + st.send_displs[q] * row_bytes_ + q * kBlockHeader) < 0) {
          return s.Fail(absl::AbortedError(
              absl::StrCat("dispatch aborted: rank ", q, " saw a rejected input")));
        }
      }
      s.phase = Phase::kCombined;
    } else if (s.stage == 0) {
      s.phase = Phase::kCombined;
    } else {
      // A relay returns each forwarded record's row to where the record came from.
      Stage& st = s.stages()[s.stage];
      Stage& prev = s.stages()[s.stage - 1];
      for (int64_t p = 0; p < st.num_send; ++p) {
        std::memcpy(prev.back_send.get() + st.send_from[p] * row_bytes_,
                    st.back_recv.get() + p * row_bytes_, row_bytes_);
      }
      --s.stage;
      posted = PostPayload(s, /*forward=*/false);
    }
    if (!posted.ok()) return s.Fail(posted);
    // Nothing to compute on a rank without slots: its combine goes out at once.
    if (s.phase == Phase::kDispatched && local_slots_.empty()) {
      CollectDelivered(s);
      posted = BeginCombine(s);
      if (!posted.ok()) return s.Fail(posted);
    }
  }
}

void Dispatcher::Track(DispatchHandle::State& s) {
  if (std::find(in_flight_.begin(), in_flight_.end(), &s) == in_flight_.end()) {
    in_flight_.push_back(&s);
  }
  if (progress_) progress_->Wake();
}

void Dispatcher::AdvanceAll() {
  for (DispatchHandle::State* s : in_flight_) Advance(*s).IgnoreError();  // sticky in s
  in_flight_.erase(std::remove_if(in_flight_.begin(), in_flight_.end(),
                                  [](const DispatchHandle::State* s) { return !s->in_flight(); }),
                   in_flight_.end());
}

absl::Status Dispatcher::Wait(DispatchHandle::State& s, bool dispatch_only) {
  for (int spins = 1;; ++spins) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      AdvanceAll();
      if (s.phase == Phase::kFailed) return s.status;
      const bool waiting = dispatch_only ? s.phase == Phase::kDispatching : s.in_flight();
      if (!waiting) return absl::OkStatus();
    }
    YieldNow(spins);
  }
}

absl::StatusOr<DispatchHandle> Dispatcher::StartDispatch(int micro_batch, ExchangeProtocol protocol,
                                                         const Tensor& x,
                                                         absl::Span<const int32_t> expert_slots,
                                                         absl::Span<const float> weights) {
  if (micro_batch < 0 || micro_batch >= options_.micro_batches) {
    return absl::InvalidArgumentError(
        absl::StrCat("micro batch ", micro_batch, " not in [0, ", options_.micro_batches, ")"));
  }
  const int64_t d = options_.hidden;
  const int k = options_.top_k;
  auto state = std::make_unique<DispatchHandle::State>();
  DispatchHandle::State& s = *state;
  s.micro_batch = micro_batch;
  s.comm = comms_[micro_batch];
  s.protocol = protocol;
  const bool low_latency = protocol == ExchangeProtocol::kLowLatency;
  s.step = low_latency ? Step::kBlocks : Step::kCounts;
  DispatchWorkspace& workspace = *workspaces_[micro_batch];
  {
    std::lock_guard<std::mutex> lock(mu_);  // a failing exchange frees it from any thread
    if (workspace.busy) {
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", rank_, ": micro batch ", micro_batch, " already has an exchange in flight"));
    }
    workspace.busy = true;
  }
  s.workspace = &workspace;
  Stage& st = s.stages()[0];

  // Validate; a bad input still takes part in the exchange, as a veto.
  const int64_t tokens = x.empty() ? 0 : x.dim(0);
  if (!x.empty() && (x.rank() != 2 || x.dim(1) != d || !x.is_contiguous())) {
    s.status = absl::InvalidArgumentError(
        absl::StrCat("rank ", rank_, ": dispatch input must be a contiguous [T, ", d,
                     "] tensor, got ", ShapeToString(x.shape())));
  } else if (static_cast<int64_t>(expert_slots.size()) != tokens * k ||
             static_cast<int64_t>(weights.size()) != tokens * k) {
    s.status = absl::InvalidArgumentError(
        absl::StrCat("rank ", rank_, ": ", tokens, " tokens with top-", k, " need ", tokens * k,
                     " slots and weights, got ", expert_slots.size(), " and ", weights.size()));
  } else {
    for (size_t i = 0; i < expert_slots.size(); ++i) {
      if (expert_slots[i] < 0 || expert_slots[i] >= static_cast<int32_t>(rank_of_slot_.size())) {
        s.status = absl::InvalidArgumentError(
            absl::StrCat("rank ", rank_, ": token ", i / k, " is routed to slot ", expert_slots[i],
                         ", not in [0, ", rank_of_slot_.size(), ")"));
        break;
      }
    }
  }
  if (!s.status.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Status error = s.status;
    st.send_counts.assign(num_ranks_, -1);
    st.send_displs.assign(num_ranks_, 0);
    absl::Status posted;
    if (low_latency) {
      st.send.Reserve(num_ranks_ * kBlockHeader);
      for (int q = 0; q < num_ranks_; ++q) WriteCount(-1, st.send.get() + q * kBlockHeader);
      posted = PostLowLatencyDispatch(s);
    } else {
      posted = PostCounts(s);
    }
    if (!posted.ok()) return s.Fail(posted);
    while (s.in_flight()) {
      absl::StatusOr<bool> done = Advance(s);
      if (!done.ok()) break;
    }
    return s.Fail(error);  // the local error
  }

  // One origin record per (token, destination rank): its pairs sorted by (rank, slot).
  s.tokens = tokens;
  std::vector<SlotWeight> pairs(tokens * k);
  std::vector<int> origin_dest;
  std::vector<int32_t> origin_first;  // into pairs
  std::vector<int32_t> origin_count;
  auto before = [this](const SlotWeight& a, const SlotWeight& b) {
    const int ra = rank_of_slot_[a.slot], rb = rank_of_slot_[b.slot];
    return ra != rb ? ra < rb : a.slot < b.slot;
  };
  for (int64_t t = 0; t < tokens; ++t) {
    SlotWeight* p = pairs.data() + t * k;
    for (int j = 0; j < k; ++j) p[j] = {expert_slots[t * k + j], weights[t * k + j]};
    for (int j = 1; j < k; ++j) {  // insertion sort: stable, no allocation, k is small
      for (int i = j; i > 0 && before(p[i], p[i - 1]); --i) std::swap(p[i], p[i - 1]);
    }
    for (int j = 0; j < k; ++j) {
      const int dest = rank_of_slot_[p[j].slot];
      if (j == 0 || dest != origin_dest.back()) {
        s.origin_token.push_back(static_cast<int32_t>(t));
        origin_dest.push_back(dest);
        origin_first.push_back(static_cast<int32_t>(t * k + j));
        origin_count.push_back(0);
      }
      ++origin_count.back();
    }
  }
  const int64_t origins = static_cast<int64_t>(origin_dest.size());
  std::vector<int32_t> items(origins);
  std::iota(items.begin(), items.end(), 0);
  std::vector<int> hops(origins);
  for (int64_t i = 0; i < origins; ++i) {
    hops[i] = low_latency ? origin_dest[i] : NextHop(0, origin_dest[i]);
  }
  GroupByHop(items, hops, num_ranks_, &st);

  // Low latency: a block header before each destination's records (see
  // PostLowLatencyDispatch); bulk: records only.
  const int64_t header = HeaderBytes(k);
  const int64_t block_header = low_latency ? kBlockHeader : 0;
  st.send.Reserve(st.num_send * record_bytes_ + num_ranks_ * block_header);
  for (int q = 0; q < num_ranks_ && low_latency; ++q) {
    WriteCount(st.send_counts[q],
               st.send.get() + st.send_displs[q] * record_bytes_ + q * kBlockHeader);
  }
  for (int64_t p = 0; p < st.num_send; ++p) {
    const int32_t i = st.send_from[p];
    const int q = hops[i];
    std::byte* record = st.send.get() + p * record_bytes_ + (q + 1) * block_header;
    WriteHeader(rank_, origin_dest[i], {pairs.data() + origin_first[i], size_t(origin_count[i])}, k,
                record);
    EncodeRow(x.data() + s.origin_token[i] * d, d, record + header);
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status posted = low_latency ? PostLowLatencyDispatch(s) : PostCounts(s);
  if (!posted.ok()) return s.Fail(posted);
  s.dispatcher = this;
  Track(s);
  return DispatchHandle(std::move(state));
}

absl::StatusOr<bool> Dispatcher::Progress(DispatchHandle& handle) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  std::lock_guard<std::mutex> lock(mu_);
  AdvanceAll();
  DispatchHandle::State& s = *handle.state_;
  if (s.phase == Phase::kFailed) return s.status;
  // A slot-less rank's combine follows its dispatch on its own: the dispatch half is over
  // once the records have left.
  if (!s.dispatch_finished && s.phase != Phase::kDispatching) return true;
  return !s.in_flight();
}

absl::Status Dispatcher::FinishDispatch(DispatchHandle& handle, ExpertBatch* batch) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  // A rank without slots may be combining already (see Advance).
  const bool slotless = local_slots_.empty();
  {
    std::lock_guard<std::mutex> lock(mu_);  // the progress thread may be advancing it
    if (s.phase == Phase::kBatched || s.phase == Phase::kDone ||
        (!slotless && s.phase != Phase::kDispatching && s.phase != Phase::kDispatched &&
         s.phase != Phase::kFailed)) {
      return absl::FailedPreconditionError(
          absl::StrCat("rank ", rank_, ": FinishDispatch: the handle is past its dispatch"));
    }
  }
  batch->x.clear();
  batch->y.clear();
  batch->slots.clear();
  batch->weights.clear();
  // The dispatch only: a slot-less rank's combine may stay in flight.
  RETURN_IF_ERROR(Wait(s, /*dispatch_only=*/true));
  s.dispatch_finished = true;
  if (slotless) return absl::OkStatus();

  CollectDelivered(s);
  const int k = options_.top_k;
  const int64_t header = HeaderBytes(k);
  const int64_t records = static_cast<int64_t>(s.delivered.size());
  batch->x.resize(records);
  batch->y.resize(records);
  batch->slots.assign(records * k, -1);
  batch->weights.assign(records * k, 0.0f);
  for (int64_t r = 0; r < records; ++r) {
    const std::byte* record = s.delivered[r].record;
    batch->x[r] = RowInWire(record + header);
    batch->y[r] = RowInWire(s.delivered[r].row);
    for (int p = 0; p < k; ++p) {
      const SlotWeight pair = RecordPair(record, p);
      if (pair.slot < 0) break;
      if (pair.slot >= static_cast<int32_t>(local_index_of_slot_.size()) ||
          local_index_of_slot_[pair.slot] < 0) {
        return s.Fail(absl::InternalError(absl::StrCat(
            "rank ", rank_, " received a row for slot ", pair.slot, " it does not hold (rank ",
            RecordSource(record), " uses a different placement)")));
      }
      batch->slots[r * k + p] = pair.slot;
      batch->weights[r * k + p] = pair.weight;
    }
  }
  s.phase = Phase::kBatched;
  return absl::OkStatus();
}

absl::Status Dispatcher::BeginCombine(DispatchHandle::State& s) {
  s.phase = Phase::kCombining;
  if (s.protocol == ExchangeProtocol::kLowLatency) return PostLowLatencyCombine(s);
  s.stage = num_stages_ - 1;
  return PostPayload(s, /*forward=*/false);
}

absl::Status Dispatcher::StartCombine(DispatchHandle& handle) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  if (local_slots_.empty()) {  // posted (or to be) as soon as the dispatch lands
    std::lock_guard<std::mutex> lock(mu_);
    return s.phase == Phase::kFailed ? s.status : absl::OkStatus();
  }
  if (s.phase != Phase::kBatched) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": combine needs a finished dispatch"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status posted = BeginCombine(s);
  if (!posted.ok()) return s.Fail(posted);
  Track(s);
  return absl::OkStatus();
}

absl::Status Dispatcher::FinishCombine(DispatchHandle& handle, Tensor* out) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  bool started;
  {
    std::lock_guard<std::mutex> lock(mu_);  // the progress thread may be advancing it
    started = s.phase == Phase::kCombining || s.phase == Phase::kCombined ||
              s.phase == Phase::kFailed || (local_slots_.empty() && s.phase == Phase::kDispatching);
  }
  if (!started) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": FinishCombine needs a started combine"));
  }
  RETURN_IF_ERROR(Wait(s, /*dispatch_only=*/false));

  // out[t] sums its combine rows in origin order: destination ranks ascending.
  const int64_t d = options_.hidden;
  const Stage& st = s.stages()[0];
  const int64_t block_header = s.protocol == ExchangeProtocol::kLowLatency ? kBlockHeader : 0;
  std::vector<int64_t> position(st.num_send);
  std::vector<int> hop_of(st.num_send);
  for (int q = 0; q < num_ranks_; ++q) {
    for (int p = st.send_displs[q]; p < st.send_displs[q] + st.send_counts[q]; ++p) {
      position[st.send_from[p]] = p;
      hop_of[st.send_from[p]] = q;
    }
  }
  // The caller's tensor is reused when it has the shape: fresh pages cost as much as the sum.
  // A token's first row is added to +0 as it lands (bitwise the sum from zero, no fill).
  if (out->shape() != Shape{s.tokens, d}) *out = Tensor({s.tokens, d});
  std::vector<bool> has_row(s.tokens, false);
  for (int64_t i = 0; i < st.num_send; ++i) {
    const std::byte* row =
        st.back_recv.get() + position[i] * row_bytes_ + (hop_of[i] + 1) * block_header;
    float* dst = out->data() + s.origin_token[i] * d;
    if (has_row[s.origin_token[i]]) {
      DecodeAddRow(row, d, dst);
    } else {
      DecodeRowPlusZero(row, d, dst);
      has_row[s.origin_token[i]] = true;
    }
  }
  for (int64_t t = 0; t < s.tokens; ++t) {
    if (!has_row[t]) std::fill(out->data() + t * d, out->data() + (t + 1) * d, 0.0f);
  }
  s.phase = Phase::kDone;
  s.Release();
  return absl::OkStatus();
}

absl::StatusOr<DispatchHandle> Dispatcher::Dispatch(ExchangeProtocol protocol, const Tensor& x,
                                                    absl::Span<const int32_t> expert_slots,
                                                    absl::Span<const float> weights,
                                                    ExpertBatch* batch) {
  ASSIGN_OR_RETURN(DispatchHandle handle, StartDispatch(0, protocol, x, expert_slots, weights));
  RETURN_IF_ERROR(FinishDispatch(handle, batch));
  return handle;
}

absl::Status Dispatcher::Combine(DispatchHandle& handle, Tensor* out) {
  RETURN_IF_ERROR(StartCombine(handle));
  return FinishCombine(handle, out);
}

}  // namespace dsv4
