// The MPI data plane for routed tokens (DESIGN.md "Dispatch"): dispatch sends each token to
// the ranks holding its routed experts, combine brings the weighted expert outputs back.
//
// Every rank of the communicator takes part in every exchange, in the same order (they are
// collectives); a rank with nothing to send or receive passes zero tokens. Per MoE layer:
//
//   token side: x [T, d] and, for each token t, k pairs (expert_slots[t·k+j],
//       weights[t·k+j]): physical expert slots and routing weights.
//   handle = StartDispatch(mb, protocol, x, slots, weights)
//   expert side: FinishDispatch(handle, &batch): the records that reached this rank, read
//       in place (no copy per slot): record r carries a token row batch.x[r] and up to k
//       (slot, weight) pairs of this rank's slots, ascending. The expert writes each
//       record's combine row batch.y[r] = Σ_pairs weight · f_slot(x[r]) (applying the
//       weight wherever its numerics want it, e.g. before w2) straight into the send
//       buffer, then StartCombine(handle).
//   token side: FinishCombine(handle, &out): out [T, d], out[t] = Σ_j weights[t·k+j] ·
//       f_{slots[t·k+j]}(x[t]).
//
// A rank may hold tokens, experts, both or neither. On a rank holding no slots the combine
// is posted as soon as the dispatch lands (there is nothing to compute there), so such a
// rank may call FinishCombine right after StartDispatch.
//
// Wire format. A token goes once to each rank holding any of its k slots (DeepEP-style
// dedup), as one dispatch record of 8 + 8·k + 4·d bytes: int32 source rank, int32
// destination rank, k × (int32 slot, fp32 weight) (ascending slot; slot −1 pads unused
// pairs), d × fp32. A combine row is d × fp32, so a token comes back once per expert rank.
// Row encoding lives in one place (dispatcher.cc) so a bf16/fp8 wire format is a local
// change.
//
// Protocols, chosen per exchange by the caller (all ranks the same; ProtocolFor turns an
// agreed bound on tokens per rank into the choice):
// - kBulk: counts first (MPI_Alltoall), then the records (MPI_Alltoallv); hierarchical mode
//   relays cross-supernode records (below).
// - kLowLatency (decode): no count round. Each rank sends every expert-holding rank one
//   message of a fixed-capacity block: an 8-byte record count, then up to `capacity`
//   records; receivers post their receives for the whole block up front. Records past the
//   capacity follow in a second message that the receiver posts for once it has read the
//   count: overflow costs a round trip, never a record. Always direct (one stage).
//   Combine sends exact-size rows back point to point.
//
// Order and numerics. fp32 on the wire: results are exact up to float summation order,
// which is fixed: the batch lists records by source rank, then by the source's token
// order; out[t] sums the combine rows in ascending expert rank order, starting from zero.
// Nothing depends on arrival timing, protocol or mode: flat, hierarchical and low latency
// give bit-identical batches and outputs.
//
// Hierarchical mode (bulk, more than one supernode): a record bound for another supernode
// first goes, within the sender's supernode, to the relay on the chip with the same local
// index as the destination's chip (Topology::PeerInSupernode), which forwards it across
// supernodes in a second exchange; records relays collect from several senders cross in one
// message. A destination without such a relay gets the record directly. Combine retraces
// the path.
//
// Accounting. Each handle records the bytes and messages this rank sent per link class
// (one message = one non-empty payload send to another rank; self traffic and the fixed
// P × 4-byte count exchanges are not counted; a low-latency block counts its 8-byte header).
// Sum over ranks for cluster totals.
//
// Progress and overlap. Exchanges are non-blocking, on the micro-batch's own communicator
// (MPI_Comm_dup), so up to `micro_batches` can be in flight while the caller computes. Open
// MPI moves data only inside MPI calls: with `progress_thread` a thread of the Dispatcher
// advances every in-flight exchange (MPI_Test, next stage, overflow receives, a slot-less
// rank's combine) while the caller computes, which needs MPI_THREAD_MULTIPLE; without it
// they advance inside the Dispatcher's own calls (and Progress). MPI rules apply: every rank
// starts exchanges on one communicator in the same order.
//
// Errors. MPI failures return INTERNAL naming the rank and the operation. Invalid bulk
// dispatch input (shapes, slot ids) is agreed on through the count exchange: the rank with
// the bad input returns INVALID_ARGUMENT, the others ABORTED naming it, and nothing is left
// in flight; a low-latency block carries the veto in its count. Errors in Combine's order
// (a handle in the wrong phase) are caller bugs that leave the peers waiting in the
// exchange: treat them as fatal.
#ifndef DSV4_DISPATCH_DISPATCHER_H_
#define DSV4_DISPATCH_DISPATCHER_H_

#include <mpi.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/cluster_config.h"
#include "core/tensor.h"
#include "core/topology.h"

namespace dsv4 {

// Bytes, messages and token copies (dispatch records or combine rows) one rank sent, per
// link class (index: static_cast<int>(LinkClass)). Bytes include protocol headers; copies
// count payload only, whatever the protocol.
struct LinkTraffic {
  std::array<int64_t, kNumLinkClasses> bytes{};
  std::array<int64_t, kNumLinkClasses> messages{};
  std::array<int64_t, kNumLinkClasses> copies{};

  int64_t bytes_on(LinkClass c) const { return bytes[static_cast<int>(c)]; }
  int64_t messages_on(LinkClass c) const { return messages[static_cast<int>(c)]; }
  LinkTraffic& operator+=(const LinkTraffic& other);
  LinkTraffic operator-(const LinkTraffic& other) const;
};

struct ExchangeTraffic {
  LinkTraffic dispatch;
  LinkTraffic combine;
};

// What an expert rank receives: the records addressed to it, in place in the receive
// buffers, each with the pairs of this rank's slots it carries. Valid until the handle's
// StartCombine; the caller writes y before it.
struct ExpertBatch {
  std::vector<const float*> x;  // [records]: record r's token row, d floats
  std::vector<float*> y;        // [records]: where the expert writes record r's combine row
  std::vector<int32_t> slots;   // [records · k]: record r's slots, ascending, −1 padding
  std::vector<float> weights;   // [records · k]: their routing weights (0 for padding)

  int64_t records() const { return static_cast<int64_t>(x.size()); }
};

enum class ExchangeProtocol { kBulk, kLowLatency };

struct DispatcherOptions {
  int64_t hidden = 0;  // d
  int top_k = 0;       // k: routed experts per token
  DispatchMode mode = DispatchMode::kFlat;
  int micro_batches = 2;  // exchanges that may be in flight at once (one communicator each)
  // ProtocolFor picks kLowLatency for at most this many tokens per rank (0: never).
  int64_t low_latency_tokens = 0;
  // Records per peer in a low-latency block (0: low_latency_tokens, which never overflows).
  int64_t low_latency_capacity = 0;
  // Advance in-flight exchanges from a thread while the caller computes (the MPI library
  // must run with MPI_THREAD_MULTIPLE).
  bool progress_thread = false;
};

class Dispatcher;
struct DispatchWorkspace;  // internal: a micro-batch's reusable buffers
class ProgressThread;      // internal

// One micro-batch's dispatch and combine, from StartDispatch to FinishCombine. Move-only.
// The exchange copies x into its micro-batch's buffers (kept by the Dispatcher and reused,
// since fresh pages cost as much as the copies), so the caller's tensors may go as soon as
// StartDispatch returns. A micro-batch takes one exchange at a time: from Start to
// FinishCombine (or a failure); starting another fails with FAILED_PRECONDITION. Drive the
// handle to the end of its phase (Finish*) before destroying it, and destroy it before its
// Dispatcher.
class DispatchHandle {
 public:
  DispatchHandle();
  DispatchHandle(DispatchHandle&&) noexcept;
  DispatchHandle& operator=(DispatchHandle&&) noexcept;
  ~DispatchHandle();

  int micro_batch() const;
  // What this rank has sent so far in this handle's dispatch and combine.
  const ExchangeTraffic& traffic() const;

 private:
  friend class Dispatcher;
  struct State;
  explicit DispatchHandle(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class Dispatcher {
 public:
  // Collective over `comm` (it duplicates one communicator per micro-batch).
  // `topology` maps the ranks of `comm` (num_ranks() must equal the communicator size) onto
  // chips; `rank_of_slot[s]` is the rank of `comm` holding physical expert slot s (from the
  // placement). INVALID_ARGUMENT when they disagree or the options are out of range.
  static absl::StatusOr<std::unique_ptr<Dispatcher>> Create(MPI_Comm comm, const Topology& topology,
                                                            std::vector<int> rank_of_slot,
                                                            const DispatcherOptions& options);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  int rank() const { return rank_; }
  int num_ranks() const { return num_ranks_; }
  const DispatcherOptions& options() const { return options_; }
  // This rank's slots, ascending.
  const std::vector<int32_t>& local_slots() const { return local_slots_; }
  // Whether dispatch runs in two stages (hierarchical mode over more than one supernode).
  bool two_stage() const { return num_stages_ == 2; }
  // Bytes of one dispatch record and of one combine row on the wire (the file comment).

  // The protocol for an exchange in which no rank sends more than `max_tokens` tokens
  // (a bound every rank agrees on, e.g. from the step plan).
  ExchangeProtocol ProtocolFor(int64_t max_tokens) const;
  // Records per peer in a low-latency block.
  int64_t low_latency_capacity() const { return capacity_; }

  // Posts micro-batch `micro_batch`'s dispatch (0 ≤ it < micro_batches). x is [T, d] (an
  // empty Tensor means T = 0); expert_slots and weights hold T·k entries.
  absl::StatusOr<DispatchHandle> StartDispatch(int micro_batch, ExchangeProtocol protocol,
                                               const Tensor& x,
                                               absl::Span<const int32_t> expert_slots,
                                               absl::Span<const float> weights);
  // Waits for the records; fills `batch` (no records on ranks holding no slots).
  absl::Status FinishDispatch(DispatchHandle& handle, ExpertBatch* batch);
  // Sends the combine rows the expert wrote into the batch's y.
  absl::Status StartCombine(DispatchHandle& handle);
  // Waits for the rows and sums them: out becomes [T, d].
  absl::Status FinishCombine(DispatchHandle& handle, Tensor* out);
  // Advances the handle's in-flight exchange without blocking; true once the current phase
  // (dispatch or combine) has completed and its Finish call will not wait.
  absl::StatusOr<bool> Progress(DispatchHandle& handle);

  // Both halves back to back, for callers that compute in between synchronously.
  absl::StatusOr<DispatchHandle> Dispatch(ExchangeProtocol protocol, const Tensor& x,
                                          absl::Span<const int32_t> expert_slots,
                                          absl::Span<const float> weights, ExpertBatch* batch);
  absl::Status Combine(DispatchHandle& handle, Tensor* out);

 private:
  friend class ProgressThread;
  friend struct DispatchHandle::State;  // leaves the in-flight list when destroyed
  Dispatcher() = default;

  // Runs the handle's state machine until it blocks or its phase ends (with mu_ held).
  absl::StatusOr<bool> Advance(DispatchHandle::State& s);
  // Advances every in-flight exchange (with mu_ held); the progress thread's body.
  void AdvanceAll();
  // Lists the handle's exchange as in flight and wakes the progress thread (with mu_ held).
  void Track(DispatchHandle::State& s);
  // Advances until the handle's phase ends (its dispatch only: until the records landed,
  // even where the combine follows on its own).
  absl::Status Wait(DispatchHandle::State& s, bool dispatch_only);
  // The stage-`stage` hop of a record bound for `dest`.
  int NextHop(int stage, int dest) const;
  absl::Status PostCounts(DispatchHandle::State& s);
  absl::Status PostPayload(DispatchHandle::State& s, bool forward);
  absl::Status PostLowLatencyDispatch(DispatchHandle::State& s);
  absl::Status PostLowLatencyOverflow(DispatchHandle::State& s);
  absl::Status PostLowLatencyCombine(DispatchHandle::State& s);
  // Builds stage s + 1's send buffer from the records stage s delivered to relays.
  void ForwardRecords(DispatchHandle::State& s);
  // Lists the records delivered here (by source rank) and their combine rows.
  void CollectDelivered(DispatchHandle::State& s);
  absl::Status BeginCombine(DispatchHandle::State& s);
  // Accounts `counts[q]` items of `item_bytes` (plus `header_bytes` per message) sent to
  // each rank q.
  void Account(const std::vector<int>& counts, int64_t item_bytes, int64_t header_bytes,
               LinkTraffic* traffic) const;

  std::unique_ptr<Topology> topology_;
  DispatcherOptions options_;
  int rank_ = 0;
  int num_ranks_ = 0;
  int num_stages_ = 1;
  int64_t capacity_ = 0;  // low-latency records per peer block
  std::vector<int> rank_of_slot_;
  std::vector<int32_t> local_slots_;
  std::vector<bool> holds_slots_;         // by rank: whether it holds any slot
  std::vector<int> local_index_of_slot_;  // slot → index into local_slots_, −1 elsewhere
  std::vector<MPI_Comm> comms_;           // one per micro-batch
  std::vector<std::unique_ptr<DispatchWorkspace>> workspaces_;  // one per micro-batch
  int64_t record_bytes_ = 0;                                    // dispatch record
  int64_t row_bytes_ = 0;                                       // combine row
  MPI_Datatype record_type_ = MPI_DATATYPE_NULL;
  MPI_Datatype row_type_ = MPI_DATATYPE_NULL;

  // Guards every MPI call on the micro-batch communicators and the in-flight list.
  std::mutex mu_;
  std::vector<DispatchHandle::State*> in_flight_;
  std::unique_ptr<ProgressThread> progress_;
};

}  // namespace dsv4

#endif  // DSV4_DISPATCH_DISPATCHER_H_
