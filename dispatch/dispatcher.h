// The MPI data plane for routed tokens (DESIGN.md "Dispatch"): dispatch sends each token to
// the ranks holding its routed experts, combine brings the weighted expert outputs back.
//
// Every rank of the communicator takes part in every exchange, in the same order (they are
// collectives); a rank with nothing to send or receive passes zero tokens. Per MoE layer:
//
//   token side (attention ranks): x [T, d] and, for each token t, k pairs
//       (expert_slots[t·k+j], weights[t·k+j]): physical expert slots and routing weights.
//   handle = Dispatch(x, slots, weights, &batch)      or StartDispatch … FinishDispatch
//   expert side (expert ranks): `batch` holds, for every slot this rank holds (ascending),
//       its rows contiguously with one routing weight per row. The expert computes
//       y[row] = weight[row] · f_slot(x[row]) (applying the weight wherever its numerics
//       want it, e.g. before w2) for every row: y is [batch.rows(), d].
//   Combine(handle, y, &out)                          or StartCombine … FinishCombine
//   token side: out [T, d], out[t] = Σ_j weights[t·k+j] · f_{slots[t·k+j]}(x[t]).
//
// A rank may hold tokens, experts, both or neither.
//
// Wire format. A token goes once to each rank holding any of its k slots (DeepEP-style
// dedup), as one dispatch record of 8 + 8·k + 4·d bytes: int32 source rank, int32
// destination rank, k × (int32 slot, fp32 weight) (slot −1 pads unused pairs), d × fp32.
// The expert rank pre-reduces the outputs of each record's slots (ascending slot) into one
// combine row of 4·d bytes (d × fp32), so a token comes back once per expert rank. Row
// encoding lives in one place (dispatcher.cc) so a bf16/fp8 wire format is a local change.
//
// Order and numerics. fp32 on the wire: results are exact up to float summation order,
// which is fixed: expert-side rows are ordered by source rank, then by the source's token
// order; each combine row sums its slots in ascending slot order; out[t] sums the combine
// rows in ascending expert rank order, starting from zero. Nothing depends on arrival
// timing, and flat and hierarchical mode give bit-identical batches and outputs. With
// slots placed in ascending order over ascending ranks (as a contiguous placement does),
// out[t] sums the terms in ascending slot order, like the in-process executor.
//
// Modes. Flat: counts go by MPI_Alltoall, records by one MPI_Alltoallv. Hierarchical (with
// more than one supernode): a record bound for another supernode first goes, within the
// sender's supernode, to the relay on the chip with the same local index as the
// destination's chip (Topology::PeerInSupernode), which forwards it across supernodes in a
// second exchange; records relays collect from several senders cross in one message. A
// destination without such a relay gets the record directly. Combine retraces the path.
//
// Accounting. Each handle records the bytes and messages this rank sent per link class
// (one message = one non-empty payload send to another rank; self traffic and the fixed
// P × 4-byte count exchanges are not counted). Sum over ranks for cluster totals.
//
// Overlap. StartDispatch/StartCombine post non-blocking collectives (MPI_Ialltoall,
// MPI_Ialltoallv) on the micro-batch's own communicator (MPI_Comm_dup), so up to
// `micro_batches` exchanges can be in flight while the caller computes. Open MPI advances
// them only inside MPI calls: call Progress on in-flight handles now and then during long
// computations. The blocking Dispatch/Combine use MPI_Alltoall/MPI_Alltoallv on micro-batch
// 0's communicator. MPI rules apply: every rank starts exchanges on one communicator in the
// same order.
//
// Errors. MPI failures return INTERNAL naming the rank and the operation. Invalid dispatch
// input (shapes, slot ids) is agreed on through the count exchange: the rank with the bad
// input returns INVALID_ARGUMENT, the others ABORTED naming it, and nothing is left in
// flight. Errors in Combine's arguments (y's shape, a handle in the wrong phase) are
// caller bugs that leave the peers waiting in the exchange: treat them as fatal.
#ifndef DSV4_DISPATCH_DISPATCHER_H_
#define DSV4_DISPATCH_DISPATCHER_H_

#include <mpi.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/cluster_config.h"
#include "core/tensor.h"
#include "core/topology.h"

namespace dsv4 {

// Bytes and messages one rank sent, per link class (index: static_cast<int>(LinkClass)).
struct LinkTraffic {
  std::array<int64_t, kNumLinkClasses> bytes{};
  std::array<int64_t, kNumLinkClasses> messages{};

  int64_t bytes_on(LinkClass c) const { return bytes[static_cast<int>(c)]; }
  int64_t messages_on(LinkClass c) const { return messages[static_cast<int>(c)]; }
  LinkTraffic& operator+=(const LinkTraffic& other);
};

struct ExchangeTraffic {
  LinkTraffic dispatch;
  LinkTraffic combine;
};

// What an expert rank receives: the rows of each slot it holds, contiguous per slot.
struct ExpertBatch {
  std::vector<int32_t> slots;    // every slot this rank holds, ascending (even if idle)
  std::vector<int64_t> offsets;  // slots.size() + 1: slot i's rows are [offsets[i], offsets[i+1])
  // [rows, d]: a view of the micro-batch's reusable buffer (fresh pages cost as much as the
  // copy), overwritten by the micro-batch's next FinishDispatch.
  Tensor x;
  std::vector<float> weights;  // [rows]: the routing weight of each row

  int64_t rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

struct DispatcherOptions {
  int64_t hidden = 0;  // d
  int top_k = 0;       // k: routed experts per token
  DispatchMode mode = DispatchMode::kFlat;
  int micro_batches = 2;  // exchanges that may be in flight at once (one communicator each)
};

class Dispatcher;
struct DispatchWorkspace;  // internal: a micro-batch's reusable buffers

// One micro-batch's dispatch and combine, from StartDispatch to FinishCombine. Move-only.
// The exchange copies x and y into its micro-batch's buffers (kept by the Dispatcher and
// reused, since fresh pages cost as much as the copies), so the caller's tensors may go as
// soon as the Start call returns. A micro-batch takes one exchange at a time: from Start to
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
  int64_t record_bytes() const { return record_bytes_; }
  int64_t row_bytes() const { return row_bytes_; }

  // Blocking dispatch; fills `batch` (empty on ranks holding no slots). x is [T, d] (an
  // empty Tensor means T = 0); expert_slots and weights hold T·k entries.
  absl::StatusOr<DispatchHandle> Dispatch(const Tensor& x, absl::Span<const int32_t> expert_slots,
                                          absl::Span<const float> weights, ExpertBatch* batch);
  // Blocking combine: y is [batch.rows(), d] (see the file comment); out becomes [T, d].
  absl::Status Combine(DispatchHandle& handle, const Tensor& y, Tensor* out);

  // Non-blocking forms, on micro-batch `micro_batch`'s communicator (0 ≤ it < micro_batches).
  absl::StatusOr<DispatchHandle> StartDispatch(int micro_batch, const Tensor& x,
                                               absl::Span<const int32_t> expert_slots,
                                               absl::Span<const float> weights);
  absl::Status FinishDispatch(DispatchHandle& handle, ExpertBatch* batch);
  absl::Status StartCombine(DispatchHandle& handle, const Tensor& y);
  absl::Status FinishCombine(DispatchHandle& handle, Tensor* out);
  // Advances the handle's in-flight exchange without blocking; true once the current phase
  // (dispatch or combine) has completed and its Finish call will not wait.
  absl::StatusOr<bool> Progress(DispatchHandle& handle);

 private:
  Dispatcher() = default;

  absl::StatusOr<DispatchHandle> Start(int micro_batch, bool blocking, const Tensor& x,
                                       absl::Span<const int32_t> expert_slots,
                                       absl::Span<const float> weights);
  absl::Status BeginCombine(DispatchHandle& handle, bool blocking, const Tensor& y);
  // Runs the handle's state machine until it blocks (wait = false) or its phase ends.
  absl::StatusOr<bool> Advance(DispatchHandle::State& s, bool wait);
  // The stage-`stage` hop of a record bound for `dest`.
  int NextHop(int stage, int dest) const;
  // Posts stage s's count or payload exchange (both directions share the code).
  absl::Status PostCounts(DispatchHandle::State& s);
  absl::Status PostPayload(DispatchHandle::State& s, bool forward);
  // Builds stage s + 1's send buffer from the records stage s delivered to relays.
  void ForwardRecords(DispatchHandle::State& s);
  // Accounts `counts[q]` items of `item_bytes` sent to each rank q.
  void Account(const std::vector<int>& counts, int64_t item_bytes, LinkTraffic* traffic) const;

  std::unique_ptr<Topology> topology_;
  DispatcherOptions options_;
  int rank_ = 0;
  int num_ranks_ = 0;
  int num_stages_ = 1;
  std::vector<int> rank_of_slot_;
  std::vector<int32_t> local_slots_;
  std::vector<int> local_index_of_slot_;  // slot → index into local_slots_, −1 elsewhere
  std::vector<MPI_Comm> comms_;           // one per micro-batch
  std::vector<std::unique_ptr<DispatchWorkspace>> workspaces_;  // one per micro-batch
  int64_t record_bytes_ = 0;                                    // dispatch record
  int64_t row_bytes_ = 0;                                       // combine row
  MPI_Datatype record_type_ = MPI_DATATYPE_NULL;
  MPI_Datatype row_type_ = MPI_DATATYPE_NULL;
};

}  // namespace dsv4

#endif  // DSV4_DISPATCH_DISPATCHER_H_
