#include "dispatch/dispatcher.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
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

void DecodeRow(const std::byte* wire, int64_t d, float* row) {
  std::memcpy(row, wire, WireRowBytes(d));
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

// One exchange stage (flat mode has one, hierarchical two). Counts and displacements are
// in records (dispatch) or rows (combine) per rank; combine runs a stage backwards, so its
// sends use recv_counts and its receives send_counts.
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

// kDispatched: the dispatch exchange completed; kBatched: FinishDispatch delivered the batch;
// kCombined: the combine exchange completed; kDone: FinishCombine returned; kFailed: an
// error ended the exchange.
enum class Phase { kDispatching, kDispatched, kBatched, kCombining, kCombined, kDone, kFailed };
enum class Step { kCounts, kPayload };

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
  Tensor rows;  // [capacity, d]: ExpertBatch::x is a view of its first rows
  bool busy = false;
};

struct DispatchHandle::State {
  int micro_batch = 0;
  MPI_Comm comm = MPI_COMM_NULL;
  bool blocking = true;
  Phase phase = Phase::kDispatching;
  Step step = Step::kCounts;
  int stage = 0;
  MPI_Request request = MPI_REQUEST_NULL;
  DispatchWorkspace* workspace = nullptr;  // null once the exchange ended
  absl::Status status;  // sticky: why the handle failed, or an invalid local input

  // Token side: origin records in token order, destinations ascending within a token.
  int64_t tokens = 0;
  std::vector<int32_t> origin_token;

  // Expert side: records that reached this rank, in source rank order, as (stage, recv
  // position), and the batch row of each of their k pairs (−1 for padding).
  std::vector<std::pair<int, int32_t>> delivered;
  std::vector<int64_t> pair_row;
  int64_t batch_rows = 0;

  ExchangeTraffic traffic;

  std::vector<Stage>& stages() { return workspace->stages; }
  // Returns the workspace to the micro-batch once nothing is in flight.
  void Release() {
    if (workspace != nullptr) workspace->busy = false;
    workspace = nullptr;
  }
  absl::Status Fail(absl::Status error) {
    phase = Phase::kFailed;
    status = error;
    Release();
    return error;
  }
  ~State() {
    // A collective cannot be cancelled, and MPI may still write into the buffers.
    if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
    Release();
  }
};

LinkTraffic& LinkTraffic::operator+=(const LinkTraffic& other) {
  for (int c = 0; c < kNumLinkClasses; ++c) {
    bytes[c] += other.bytes[c];
    messages[c] += other.messages[c];
  }
  return *this;
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
  d->local_index_of_slot_.assign(rank_of_slot.size(), -1);
  for (int slot = 0; slot < static_cast<int>(rank_of_slot.size()); ++slot) {
    const int r = rank_of_slot[slot];
    if (r < 0 || r >= size) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", slot, " is placed on rank ", r, ", not in [0, ", size, ")"));
    }
    if (r == rank) {
      d->local_index_of_slot_[slot] = static_cast<int>(d->local_slots_.size());
      d->local_slots_.push_back(slot);
    }
  }
  d->rank_of_slot_ = std::move(rank_of_slot);
  d->record_bytes_ = HeaderBytes(options.top_k) + WireRowBytes(options.hidden);
  d->row_bytes_ = WireRowBytes(options.hidden);
  if (d->record_bytes_ > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("hidden size ", options.hidden, " too large"));
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
    // Report failures as Status instead of aborting the job.
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  }
  return d;
}

Dispatcher::~Dispatcher() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm& c : comms_) MPI_Comm_free(&c);
  if (record_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&record_type_);
  if (row_type_ != MPI_DATATYPE_NULL) MPI_Type_free(&row_type_);
}

int Dispatcher::NextHop(int stage, int dest) const {
  if (num_stages_ == 1 || stage == 1) return dest;
  const int here = topology_->rank_position(rank_).supernode;
  if (topology_->rank_position(dest).supernode == here) return dest;
  return topology_->PeerInSupernode(dest, here).value_or(dest);
}

void Dispatcher::Account(const std::vector<int>& counts, int64_t item_bytes,
                         LinkTraffic* traffic) const {
  for (int q = 0; q < num_ranks_; ++q) {
    if (q == rank_ || counts[q] == 0) continue;
    const int c = static_cast<int>(topology_->LinkBetween(rank_, q));
    traffic->bytes[c] += counts[q] * item_bytes;
    ++traffic->messages[c];
  }
}

absl::Status Dispatcher::PostCounts(DispatchHandle::State& s) {
  Stage& st = s.stages()[s.stage];
  st.recv_counts.assign(num_ranks_, 0);
  s.step = Step::kCounts;
  const int rc = s.blocking ? MPI_Alltoall(st.send_counts.data(), 1, MPI_INT, st.recv_counts.data(),
                                           1, MPI_INT, s.comm)
                            : MPI_Ialltoall(st.send_counts.data(), 1, MPI_INT,
                                            st.recv_counts.data(), 1, MPI_INT, s.comm, &s.request);
  if (rc != MPI_SUCCESS) {
    return MpiError(rc, rank_, s.blocking ? "MPI_Alltoall (counts)" : "MPI_Ialltoall (counts)");
  }
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
  Account(scounts, forward ? record_bytes_ : row_bytes_,
          forward ? &s.traffic.dispatch : &s.traffic.combine);
  const int rc = s.blocking
                     ? MPI_Alltoallv(send, scounts.data(), sdispls.data(), type, recv,
                                     rcounts.data(), rdispls.data(), type, s.comm)
                     : MPI_Ialltoallv(send, scounts.data(), sdispls.data(), type, recv,
                                      rcounts.data(), rdispls.data(), type, s.comm, &s.request);
  if (rc != MPI_SUCCESS) {
    return MpiError(rc, rank_,
                    absl::StrCat(s.blocking ? "MPI_Alltoallv" : "MPI_Ialltoallv",
                                 forward ? " (dispatch stage " : " (combine stage ", s.stage, ")"));
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

absl::StatusOr<bool> Dispatcher::Advance(DispatchHandle::State& s, bool wait) {
  while (true) {
    if (s.phase == Phase::kFailed) return s.status;
    if (s.phase != Phase::kDispatching && s.phase != Phase::kCombining) return true;
    if (s.request != MPI_REQUEST_NULL) {
      int done = 1;
      const int rc = wait ? MPI_Wait(&s.request, MPI_STATUS_IGNORE)
                          : MPI_Test(&s.request, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return s.Fail(MpiError(rc, rank_, wait ? "MPI_Wait" : "MPI_Test"));
      if (!done) return false;
    }
    Stage& st = s.stages()[s.stage];
    absl::Status posted;
    if (s.phase == Phase::kDispatching && s.step == Step::kCounts) {
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
    } else if (s.phase == Phase::kDispatching) {
      if (s.stage + 1 == num_stages_) {
        s.phase = Phase::kDispatched;
        continue;
      }
      ForwardRecords(s);
      ++s.stage;
      posted = PostCounts(s);
    } else {  // combining: stage s's rows are back
      if (s.stage == 0) {
        s.phase = Phase::kCombined;
        continue;
      }
      // A relay returns each forwarded record's row to where the record came from.
      Stage& prev = s.stages()[s.stage - 1];
      for (int64_t p = 0; p < st.num_send; ++p) {
        std::memcpy(prev.back_send.get() + st.send_from[p] * row_bytes_,
                    st.back_recv.get() + p * row_bytes_, row_bytes_);
      }
      --s.stage;
      posted = PostPayload(s, /*forward=*/false);
    }
    if (!posted.ok()) return s.Fail(posted);
  }
}

absl::StatusOr<DispatchHandle> Dispatcher::Start(int micro_batch, bool blocking, const Tensor& x,
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
  s.blocking = blocking;
  DispatchWorkspace& workspace = *workspaces_[micro_batch];
  if (workspace.busy) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank_, ": micro batch ", micro_batch,
                                                      " already has an exchange in flight"));
  }
  workspace.busy = true;
  s.workspace = &workspace;
  Stage& st = s.stages()[0];

  // Validate; a bad input still takes part in the count exchange, as a veto.
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
    st.send_counts.assign(num_ranks_, -1);
    RETURN_IF_ERROR(PostCounts(s));
    return Advance(s, /*wait=*/true).status();  // the local error
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
  for (int64_t i = 0; i < origins; ++i) hops[i] = NextHop(0, origin_dest[i]);
  GroupByHop(items, hops, num_ranks_, &st);

  const int64_t header = HeaderBytes(k);
  st.send.Reserve(st.num_send * record_bytes_);
  for (int64_t p = 0; p < st.num_send; ++p) {
    const int32_t i = st.send_from[p];
    std::byte* record = st.send.get() + p * record_bytes_;
    WriteHeader(rank_, origin_dest[i], {pairs.data() + origin_first[i], size_t(origin_count[i])}, k,
                record);
    EncodeRow(x.data() + s.origin_token[i] * d, d, record + header);
  }
  RETURN_IF_ERROR(PostCounts(s));
  return DispatchHandle(std::move(state));
}

absl::StatusOr<DispatchHandle> Dispatcher::StartDispatch(int micro_batch, const Tensor& x,
                                                         absl::Span<const int32_t> expert_slots,
                                                         absl::Span<const float> weights) {
  return Start(micro_batch, /*blocking=*/false, x, expert_slots, weights);
}

absl::StatusOr<DispatchHandle> Dispatcher::Dispatch(const Tensor& x,
                                                    absl::Span<const int32_t> expert_slots,
                                                    absl::Span<const float> weights,
                                                    ExpertBatch* batch) {
  ASSIGN_OR_RETURN(DispatchHandle handle, Start(0, /*blocking=*/true, x, expert_slots, weights));
  RETURN_IF_ERROR(FinishDispatch(handle, batch));
  return handle;
}

absl::StatusOr<bool> Dispatcher::Progress(DispatchHandle& handle) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  return Advance(*handle.state_, /*wait=*/false);
}

absl::Status Dispatcher::FinishDispatch(DispatchHandle& handle, ExpertBatch* batch) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  if (s.phase != Phase::kDispatching && s.phase != Phase::kDispatched &&
      s.phase != Phase::kFailed) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": FinishDispatch: the handle is past its dispatch"));
  }
  RETURN_IF_ERROR(Advance(s, /*wait=*/true).status());

  // The records addressed to this rank, ordered by source rank: each source's records to
  // one destination travel one path and keep their order, so this order does not depend
  // on the mode or on timing.
  const int k = options_.top_k;
  const int64_t d = options_.hidden;
  std::vector<std::pair<int, int32_t>> arrived;
  std::vector<int> source_counts(num_ranks_, 0);
  for (int stage = 0; stage < num_stages_; ++stage) {
    const Stage& st = s.stages()[stage];
    for (int64_t j = 0; j < st.num_recv; ++j) {
      const std::byte* record = st.recv.get() + j * record_bytes_;
      if (RecordDest(record) != rank_) continue;
      arrived.emplace_back(stage, static_cast<int32_t>(j));
      ++source_counts[RecordSource(record)];
    }
  }
  std::vector<int> cursor = Displacements(source_counts);
  s.delivered.resize(arrived.size());
  for (const auto& [stage, j] : arrived) {
    const std::byte* record = s.stages()[stage].recv.get() + j * record_bytes_;
    s.delivered[cursor[RecordSource(record)]++] = {stage, j};
  }

  // Rows per local slot, then the rows themselves.
  const int num_local = static_cast<int>(local_slots_.size());
  std::vector<int64_t> slot_rows(num_local, 0);
  for (const auto& [stage, j] : s.delivered) {
    const std::byte* record = s.stages()[stage].recv.get() + j * record_bytes_;
    for (int p = 0; p < k; ++p) {
      const SlotWeight pair = RecordPair(record, p);
      if (pair.slot < 0) break;
      if (pair.slot >= static_cast<int32_t>(local_index_of_slot_.size()) ||
          local_index_of_slot_[pair.slot] < 0) {
        return s.Fail(absl::InternalError(absl::StrCat(
            "rank ", rank_, " received a row for slot ", pair.slot, " it does not hold (rank ",
            RecordSource(record), " uses a different placement)")));
      }
      ++slot_rows[local_index_of_slot_[pair.slot]];
    }
  }
  batch->slots = local_slots_;
  batch->offsets.assign(num_local + 1, 0);
  std::partial_sum(slot_rows.begin(), slot_rows.end(), batch->offsets.begin() + 1);
  s.batch_rows = batch->offsets.back();
  Tensor& rows = s.workspace->rows;
  if (rows.empty() || rows.dim(0) < s.batch_rows) {
    rows = Tensor({GrownCapacity(s.batch_rows, rows.empty() ? 0 : rows.dim(0)), d});
  }
  batch->x = rows.Slice(0, 0, s.batch_rows);
  batch->weights.resize(s.batch_rows);
  std::vector<int64_t> next(batch->offsets.begin(), batch->offsets.end() - 1);
  s.pair_row.assign(s.delivered.size() * k, -1);
  const int64_t header = HeaderBytes(k);
  for (size_t r = 0; r < s.delivered.size(); ++r) {
    const auto& [stage, j] = s.delivered[r];
    const std::byte* record = s.stages()[stage].recv.get() + j * record_bytes_;
    for (int p = 0; p < k; ++p) {
      const SlotWeight pair = RecordPair(record, p);
      if (pair.slot < 0) break;
      const int64_t row = next[local_index_of_slot_[pair.slot]]++;
      DecodeRow(record + header, d, batch->x.data() + row * d);
      batch->weights[row] = pair.weight;
      s.pair_row[r * k + p] = row;
    }
  }
  s.phase = Phase::kBatched;
  return absl::OkStatus();
}

absl::Status Dispatcher::BeginCombine(DispatchHandle& handle, bool blocking, const Tensor& y) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  if (s.phase != Phase::kBatched) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": combine needs a finished dispatch"));
  }
  const int64_t d = options_.hidden;
  const int k = options_.top_k;
  if (s.batch_rows > 0 &&
      (y.rank() != 2 || y.dim(0) != s.batch_rows || y.dim(1) != d || !y.is_contiguous())) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank_, ": combine input must be a contiguous [", s.batch_rows, ", ",
                     d, "] tensor, got ", ShapeToString(y.shape())));
  }
  s.blocking = blocking;
  for (Stage& st : s.stages()) {
    st.back_send.Reserve(st.num_recv * row_bytes_);
    st.back_recv.Reserve(st.num_send * row_bytes_);
  }
  // Pre-reduce each delivered record's slots (ascending) into its combine row.
  std::vector<float> sum(d);
  for (size_t r = 0; r < s.delivered.size(); ++r) {
    std::fill(sum.begin(), sum.end(), 0.0f);
    for (int p = 0; p < k && s.pair_row[r * k + p] >= 0; ++p) {
      const float* row = y.data() + s.pair_row[r * k + p] * d;
      for (int64_t i = 0; i < d; ++i) sum[i] += row[i];
    }
    const auto& [stage, j] = s.delivered[r];
    EncodeRow(sum.data(), d, s.stages()[stage].back_send.get() + j * row_bytes_);
  }
  s.phase = Phase::kCombining;
  s.stage = num_stages_ - 1;
  absl::Status posted = PostPayload(s, /*forward=*/false);
  return posted.ok() ? posted : s.Fail(posted);
}

absl::Status Dispatcher::StartCombine(DispatchHandle& handle, const Tensor& y) {
  return BeginCombine(handle, /*blocking=*/false, y);
}

absl::Status Dispatcher::FinishCombine(DispatchHandle& handle, Tensor* out) {
  if (!handle.state_) return absl::FailedPreconditionError("empty dispatch handle");
  DispatchHandle::State& s = *handle.state_;
  if (s.phase != Phase::kCombining && s.phase != Phase::kCombined && s.phase != Phase::kFailed) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank ", rank_, ": FinishCombine needs a started combine"));
  }
  RETURN_IF_ERROR(Advance(s, /*wait=*/true).status());

  // out[t] sums its combine rows in origin order: destination ranks ascending.
  const int64_t d = options_.hidden;
  const Stage& st = s.stages()[0];
  std::vector<int64_t> position(st.num_send);
  for (int64_t p = 0; p < st.num_send; ++p) position[st.send_from[p]] = p;
  *out = Tensor({s.tokens, d});
  for (int64_t i = 0; i < st.num_send; ++i) {
    DecodeAddRow(st.back_recv.get() + position[i] * row_bytes_, d,
                 out->data() + s.origin_token[i] * d);
  }
  s.phase = Phase::kDone;
  s.Release();
  return absl::OkStatus();
}

absl::Status Dispatcher::Combine(DispatchHandle& handle, const Tensor& y, Tensor* out) {
  RETURN_IF_ERROR(BeginCombine(handle, /*blocking=*/true, y));
  return FinishCombine(handle, out);
}

}  // namespace dsv4
