// Dispatch and combine under mpirun (-np 6): each test runs on a sub-communicator of the
// first n world ranks with its own topology. The expert on slot e computes
// f_e(x) = (e + 1)·x + e, weighted on the expert side; inputs and weights are multiples of
// 1/8 and small, so every sum is exact and results compare with EXPECT_EQ whatever the
// summation order. Most checks run for both protocols, and low latency also with blocks
// of 1 and 2 records, so that records overflow into the second message.
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/cluster_config.h"
#include "core/tensor.h"
#include "core/topology.h"
#include "dispatch/dispatcher.h"
#include "gtest/gtest.h"
#include "tests/mpi_test_util.h"

namespace dsv4 {
namespace {

using ::dsv4::testing::MpiTest;
using ::dsv4::testing::WorldRank;

struct Tokens {
  Tensor x;  // [T, d]
  std::vector<int32_t> slots;
  std::vector<float> weights;
};

// T tokens, each routed to k distinct slots out of `num_slots`, seeded.
Tokens MakeTokens(int64_t tokens, int64_t d, int num_slots, int k, uint32_t seed) {
  std::mt19937 rng(seed);
  Tokens t;
  t.x = Tensor({tokens, d});
  for (int64_t i = 0; i < tokens * d; ++i) t.x.data()[i] = static_cast<int>(rng() % 17) / 4.0f - 2;
  for (int64_t i = 0; i < tokens; ++i) {
    std::vector<int32_t> chosen;
    while (static_cast<int>(chosen.size()) < k) {
      const int32_t s = static_cast<int32_t>(rng() % num_slots);
      if (std::find(chosen.begin(), chosen.end(), s) == chosen.end()) chosen.push_back(s);
    }
    for (int32_t s : chosen) {
      t.slots.push_back(s);
      t.weights.push_back(static_cast<int>(1 + rng() % 8) / 8.0f);
    }
  }
  return t;
}

float F(int slot, float x) { return (slot + 1) * x + slot; }

// out[t] = Σ_j w_j · f_{e_j}(x[t]), computed locally.
std::vector<float> Reference(const Tokens& t, int k) {
  const int64_t tokens = t.x.empty() ? 0 : t.x.dim(0);
  const int64_t d = t.x.empty() ? 0 : t.x.dim(1);
  std::vector<float> out(tokens * d, 0.0f);
  for (int64_t i = 0; i < tokens; ++i) {
    for (int j = 0; j < k; ++j) {
      for (int64_t c = 0; c < d; ++c) {
        out[i * d + c] += t.weights[i * k + j] * F(t.slots[i * k + j], t.x.data()[i * d + c]);
      }
    }
  }
  return out;
}

// The expert rank's work: y[r] = Σ_j weight_j · f_{slot_j}(x[r]) over the record's pairs.
void RunExperts(const ExpertBatch& batch, int64_t d, int k) {
  for (int64_t r = 0; r < batch.records(); ++r) {
    std::fill(batch.y[r], batch.y[r] + d, 0.0f);
    for (int j = 0; j < k && batch.slots[r * k + j] >= 0; ++j) {
      for (int64_t c = 0; c < d; ++c) {
        batch.y[r][c] += batch.weights[r * k + j] * F(batch.slots[r * k + j], batch.x[r][c]);
      }
    }
  }
}

// A copy of what the expert side received (the batch itself views reused buffers).
struct Received {
  std::vector<float> x;  // the records' rows, concatenated
  std::vector<int32_t> slots;
  std::vector<float> weights;

  Received() = default;
  Received(const ExpertBatch& batch, int64_t d) : slots(batch.slots), weights(batch.weights) {
    for (const float* row : batch.x) x.insert(x.end(), row, row + d);
  }
  bool operator==(const Received&) const = default;
};

struct Result {
  Received batch;
  Tensor out;
  ExchangeTraffic traffic;
};

Result DispatchAndCombine(Dispatcher& dispatcher, const Tokens& t,
                          ExchangeProtocol protocol = ExchangeProtocol::kBulk) {
  const int64_t d = dispatcher.options().hidden;
  const int k = dispatcher.options().top_k;
  Result r;
  ExpertBatch batch;
  absl::StatusOr<DispatchHandle> handle =
      dispatcher.Dispatch(protocol, t.x, t.slots, t.weights, &batch);
  EXPECT_TRUE(handle.ok()) << handle.status();
  if (!handle.ok()) return r;
  r.batch = Received(batch, d);
  RunExperts(batch, d, k);
  const absl::Status combined = dispatcher.Combine(*handle, &r.out);
  EXPECT_TRUE(combined.ok()) << combined;
  r.traffic = handle->traffic();
  return r;
}

// The protocols every check runs with: bulk, then low latency with blocks of `capacity`.
struct Variant {
  ExchangeProtocol protocol;
  int64_t capacity;  // records per low-latency block (0: the default)
  std::string name() const {
    return protocol == ExchangeProtocol::kBulk
               ? "bulk"
               : "low latency, capacity " + std::to_string(capacity);
  }
};
const Variant kVariants[] = {{ExchangeProtocol::kBulk, 0},
                             {ExchangeProtocol::kLowLatency, 0},
                             {ExchangeProtocol::kLowLatency, 1},
                             {ExchangeProtocol::kLowLatency, 2}};

// `supernodes` × 1 node × `chips` chips; ranks on chips per `rank_chips` (default r → r).
Topology MakeTopology(std::vector<int> chips_per_supernode, int attention, int expert,
                      std::vector<int> rank_chips = {}) {
  TopologySpec spec;
  for (int chips : chips_per_supernode) spec.supernodes.push_back({{NodeSpec{chips, ""}}});
  RolesSpec roles{attention, expert, std::move(rank_chips)};
  absl::StatusOr<Topology> topology = Topology::Build(spec, roles);
  EXPECT_TRUE(topology.ok()) << topology.status();
  return *std::move(topology);
}

// Slots split contiguously over ranks [first, first + count).
std::vector<int> ContiguousPlacement(int num_slots, int first, int count) {
  std::vector<int> rank_of_slot(num_slots);
  for (int s = 0; s < num_slots; ++s) rank_of_slot[s] = first + s * count / num_slots;
  return rank_of_slot;
}

// Runs `body` on a communicator of world ranks [0, n); the other ranks skip it.
void OnRanks(int n, const std::function<void(MPI_Comm)>& body) {
  MPI_Comm comm;
  MPI_Comm_split(MPI_COMM_WORLD, WorldRank() < n ? 0 : MPI_UNDEFINED, WorldRank(), &comm);
  if (comm == MPI_COMM_NULL) return;
  body(comm);
  MPI_Comm_free(&comm);
}

std::unique_ptr<Dispatcher> MakeDispatcher(MPI_Comm comm, const Topology& topology,
                                           std::vector<int> rank_of_slot, int64_t d, int k,
                                           DispatchMode mode, int64_t capacity = 0,
                                           bool progress_thread = false) {
  DispatcherOptions options{d, k, mode, 2};
  options.low_latency_tokens = 64;
  options.low_latency_capacity = capacity;
  options.progress_thread = progress_thread;
  absl::StatusOr<std::unique_ptr<Dispatcher>> dispatcher =
      Dispatcher::Create(comm, topology, std::move(rank_of_slot), options);
  EXPECT_TRUE(dispatcher.ok()) << dispatcher.status();
  return dispatcher.ok() ? *std::move(dispatcher) : nullptr;
}

int64_t SumOverRanks(int64_t value, MPI_Comm comm) {
  MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT64_T, MPI_SUM, comm);
  return value;
}

// Every rank < attention holds `tokens` tokens; the others hold none.
void ExpectMatchesReference(int attention, int expert, const Topology& topology,
                            DispatchMode mode) {
  constexpr int64_t kDim = 8;
  constexpr int kSlots = 12, kTopK = 3;
  for (const Variant& v : kVariants) {
    OnRanks(attention + expert, [&](MPI_Comm comm) {
      const int rank = WorldRank();
      auto dispatcher =
          MakeDispatcher(comm, topology, ContiguousPlacement(kSlots, attention, expert), kDim,
                         kTopK, mode, v.capacity);
      const Tokens t = MakeTokens(rank < attention ? 5 + rank : 0, kDim, kSlots, kTopK, 7 + rank);
      Result r = DispatchAndCombine(*dispatcher, t, v.protocol);
      EXPECT_EQ(r.out.ToVector(), Reference(t, kTopK)) << v.name() << ", rank " << rank;
      // Every (token, slot) pair reaches its slot's rank exactly once.
      std::vector<int64_t> pairs(kSlots, 0), received(kSlots, 0);
      for (int32_t s : t.slots) ++pairs[s];
      for (int32_t s : r.batch.slots) received[s] += s >= 0;
      MPI_Allreduce(MPI_IN_PLACE, pairs.data(), kSlots, MPI_INT64_T, MPI_SUM, comm);
      for (int s = 0; s < kSlots; ++s) {
        if (ContiguousPlacement(kSlots, attention, expert)[s] != rank) continue;
        EXPECT_EQ(received[s], pairs[s]) << v.name() << ", rank " << rank << " slot " << s;
      }
    });
  }
}

class DispatchTest : public MpiTest {};

TEST_F(DispatchTest, FlatOneAttentionOneExpert) {
  ExpectMatchesReference(1, 1, MakeTopology({2}, 1, 1), DispatchMode::kFlat);
}

TEST_F(DispatchTest, FlatTwoAttentionTwoExpert) {
  ExpectMatchesReference(2, 2, MakeTopology({4}, 2, 2), DispatchMode::kFlat);
}

TEST_F(DispatchTest, FlatOneAttentionThreeExpert) {
  ExpectMatchesReference(1, 3, MakeTopology({4}, 1, 3), DispatchMode::kFlat);
}

TEST_F(DispatchTest, HierarchicalOnOneSupernodeIsFlat) {
  ExpectMatchesReference(2, 2, MakeTopology({4}, 2, 2), DispatchMode::kHierarchical);
}

// Relays that are expert ranks (rank 2 relays rank 0's tokens for rank 3), and a supernode
// too small to hold a relay (rank 0 sends to rank 2 directly).
TEST_F(DispatchTest, HierarchicalRelaysAnyRankAndFallsBackToDirect) {
  ExpectMatchesReference(2, 2, MakeTopology({3, 3}, 2, 2, {0, 3, 1, 4}),
                         DispatchMode::kHierarchical);
  ExpectMatchesReference(2, 2, MakeTopology({1, 3}, 2, 2), DispatchMode::kHierarchical);
}

// Every rank holds tokens and slots (self sends, self relays).
TEST_F(DispatchTest, RanksHoldingTokensAndExperts) {
  constexpr int64_t kDim = 4;
  constexpr int kSlots = 8, kTopK = 4;
  for (DispatchMode mode : {DispatchMode::kFlat, DispatchMode::kHierarchical}) {
    OnRanks(4, [&](MPI_Comm comm) {
      const int rank = WorldRank();
      auto dispatcher = MakeDispatcher(comm, MakeTopology({2, 2}, 2, 2),
                                       ContiguousPlacement(kSlots, 0, 4), kDim, kTopK, mode);
      const Tokens t = MakeTokens(6, kDim, kSlots, kTopK, 100 + rank);
      for (const Variant& v : {kVariants[0], kVariants[1]}) {
        EXPECT_EQ(DispatchAndCombine(*dispatcher, t, v.protocol).out.ToVector(),
                  Reference(t, kTopK))
            << v.name() << ", rank " << rank;
      }
    });
  }
}

TEST_F(DispatchTest, HierarchicalMatchesFlatOnTwoSupernodes) {
  absl::StatusOr<ClusterConfig> config =
      LoadClusterConfig(DSV4_SOURCE_DIR "/cluster-configs/two-supernodes-test.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<Topology> topology = Topology::Build(*config);
  ASSERT_TRUE(topology.ok()) << topology.status();
  ASSERT_EQ(topology->num_ranks(), 6);
  ASSERT_EQ(config->engine.dispatch, DispatchMode::kHierarchical);
  ExpectMatchesReference(3, 3, *topology, DispatchMode::kHierarchical);

  constexpr int64_t kDim = 16;
  constexpr int kSlots = 12, kTopK = 4;
  OnRanks(6, [&](MPI_Comm comm) {
    const int rank = WorldRank();
    const Tokens t = MakeTokens(rank < 3 ? 20 : 0, kDim, kSlots, kTopK, 11 + rank);
    Result flat =
        DispatchAndCombine(*MakeDispatcher(comm, *topology, ContiguousPlacement(kSlots, 3, 3), kDim,
                                           kTopK, DispatchMode::kFlat),
                           t);
    auto dispatcher = MakeDispatcher(comm, *topology, ContiguousPlacement(kSlots, 3, 3), kDim,
                                     kTopK, DispatchMode::kHierarchical);
    EXPECT_TRUE(dispatcher->two_stage());
    Result hier = DispatchAndCombine(*dispatcher, t);
    // Same records in the same order, and bit-identical outputs.
    EXPECT_TRUE(hier.batch == flat.batch) << "rank " << rank;
    EXPECT_EQ(hier.out.ToVector(), flat.out.ToVector()) << "rank " << rank;

    // 20 tokens × top-4 of 12 slots reach every expert rank from every attention rank: flat
    // crosses supernodes in 3 × 3 messages each way, hierarchical in 3 (peer to peer), with
    // the same cross-supernode bytes.
    constexpr LinkClass kInter = LinkClass::kInterSupernode;
    for (auto [f, h] : {std::pair{flat.traffic.dispatch, hier.traffic.dispatch},
                        std::pair{flat.traffic.combine, hier.traffic.combine}}) {
      EXPECT_EQ(SumOverRanks(f.messages_on(kInter), comm), 9);
      EXPECT_EQ(SumOverRanks(h.messages_on(kInter), comm), 3);
      EXPECT_EQ(SumOverRanks(f.bytes_on(kInter), comm), SumOverRanks(h.bytes_on(kInter), comm));
    }
  });
}

TEST_F(DispatchTest, ZeroTokenRanks) {
  constexpr int64_t kDim = 4;
  constexpr int kSlots = 6, kTopK = 2;
  OnRanks(4, [&](MPI_Comm comm) {
    const int rank = WorldRank();
    auto dispatcher =
        MakeDispatcher(comm, MakeTopology({4}, 2, 2), ContiguousPlacement(kSlots, 2, 2), kDim,
                       kTopK, DispatchMode::kFlat);
    // Rank 1 holds no tokens (an empty [0, d] tensor), then nobody does (empty tensors).
    const Tokens some = MakeTokens(rank == 0 ? 3 : 0, kDim, kSlots, kTopK, 3);
    Result r = DispatchAndCombine(*dispatcher, some);
    EXPECT_EQ(r.out.ToVector(), Reference(some, kTopK)) << "rank " << rank;
    if (rank < 2) {
      EXPECT_EQ(r.out.shape(), Shape({rank == 0 ? 3 : 0, kDim}));
    }

    Result none = DispatchAndCombine(*dispatcher, Tokens{});
    EXPECT_EQ(none.out.numel(), 0);
    EXPECT_TRUE(none.batch.x.empty());
    EXPECT_EQ(none.traffic.dispatch.messages, (std::array<int64_t, kNumLinkClasses>{}));
  });
}

// Two micro-batches in flight on their own communicators (hierarchical: two stages each),
// finished out of order, match the reference and the blocking path.
TEST_F(DispatchTest, NonBlockingTwoMicroBatches) {
  constexpr int64_t kDim = 8;
  constexpr int kSlots = 8, kTopK = 2;
  OnRanks(4, [&](MPI_Comm comm) {
    const int rank = WorldRank();
    auto dispatcher =
        MakeDispatcher(comm, MakeTopology({2, 2}, 2, 2), ContiguousPlacement(kSlots, 2, 2), kDim,
                       kTopK, DispatchMode::kHierarchical);
    const Tokens a = MakeTokens(rank < 2 ? 7 : 0, kDim, kSlots, kTopK, 21 + rank);
    const Tokens b = MakeTokens(rank < 2 ? 4 : 0, kDim, kSlots, kTopK, 31 + rank);
    constexpr ExchangeProtocol kBulk = ExchangeProtocol::kBulk;
    absl::StatusOr<DispatchHandle> ha =
        dispatcher->StartDispatch(0, kBulk, a.x, a.slots, a.weights);
    absl::StatusOr<DispatchHandle> hb =
        dispatcher->StartDispatch(1, kBulk, b.x, b.slots, b.weights);
    ASSERT_TRUE(ha.ok() && hb.ok());
    EXPECT_EQ(hb->micro_batch(), 1);
    // One exchange per micro-batch at a time (a local check: nothing is posted).
    EXPECT_EQ(dispatcher->StartDispatch(0, kBulk, a.x, a.slots, a.weights).status().code(),
              absl::StatusCode::kFailedPrecondition);
    // Progress alone drives a's two stages to completion (every rank polls).
    absl::StatusOr<bool> done = false;
    while (done.ok() && !*done) done = dispatcher->Progress(*ha);
    EXPECT_TRUE(done.ok()) << done.status();

    ExpertBatch batch_a, batch_b;
    EXPECT_TRUE(dispatcher->FinishDispatch(*hb, &batch_b).ok());
    RunExperts(batch_b, kDim, kTopK);
    EXPECT_TRUE(dispatcher->StartCombine(*hb).ok());
    EXPECT_TRUE(dispatcher->FinishDispatch(*ha, &batch_a).ok());
    // batch_a views micro-batch 0's buffers, which the blocking dispatch below reuses.
    const Received received_a(batch_a, kDim);
    RunExperts(batch_a, kDim, kTopK);
    EXPECT_TRUE(dispatcher->StartCombine(*ha).ok());
    Tensor out_a, out_b;
    EXPECT_TRUE(dispatcher->FinishCombine(*ha, &out_a).ok());
    EXPECT_TRUE(dispatcher->FinishCombine(*hb, &out_b).ok());
    EXPECT_EQ(out_a.ToVector(), Reference(a, kTopK)) << "rank " << rank;
    EXPECT_EQ(out_b.ToVector(), Reference(b, kTopK)) << "rank " << rank;
    EXPECT_EQ(dispatcher->FinishCombine(*ha, &out_a).code(), absl::StatusCode::kFailedPrecondition);

    Result blocking = DispatchAndCombine(*dispatcher, a);
    EXPECT_TRUE(blocking.batch == received_a) << "rank " << rank;
    EXPECT_EQ(blocking.traffic.dispatch.bytes, ha->traffic().dispatch.bytes) << "rank " << rank;
  });
}

// Hand count. 2 supernodes × 2 chips; attention ranks 0, 1 on supernode 0, expert ranks 2
// (slots 0, 1) and 3 (slots 2, 3) on supernode 1. d = 4, k = 2: a record is
// 8 + 8·2 + 4·4 = 40 bytes, a combine row 16 bytes. Rank 0's tokens go to {2}, {2, 3},
// {3}; rank 1's one token to {2, 3}.
TEST_F(DispatchTest, TrafficMatchesHandCount) {
  const std::vector<std::vector<int32_t>> slots = {{0, 1, 0, 2, 3, 2}, {1, 3}};
  using Counts = std::array<int64_t, kNumLinkClasses>;  // intra-node, intra-SN, inter-SN
  struct Expected {
    Counts dispatch_bytes, dispatch_messages, combine_bytes, combine_messages;
  };
  // Flat: every attention rank sends straight to both expert ranks (2 + 2 records from
  // rank 0, 1 + 1 from rank 1); each expert rank returns one row per record.
  const std::vector<Expected> flat = {{{0, 0, 160}, {0, 0, 2}, {}, {}},
                                      {{0, 0, 80}, {0, 0, 2}, {}, {}},
                                      {{}, {}, {0, 0, 48}, {0, 0, 2}},
                                      {{}, {}, {0, 0, 48}, {0, 0, 2}}};
  // Hierarchical: rank 2's relay on supernode 0 is rank 0, rank 3's is rank 1. Stage 1:
  // rank 0 hands rank 1 its 2 records for rank 3, rank 1 hands rank 0 its 1 record for
  // rank 2; stage 2: each relay sends 3 records across to its peer. Combine retraces it.
  const std::vector<Expected> hier = {{{80, 0, 120}, {1, 0, 1}, {16, 0, 0}, {1, 0, 0}},
                                      {{40, 0, 120}, {1, 0, 1}, {32, 0, 0}, {1, 0, 0}},
                                      {{}, {}, {0, 0, 48}, {0, 0, 1}},
                                      {{}, {}, {0, 0, 48}, {0, 0, 1}}};
  for (DispatchMode mode : {DispatchMode::kFlat, DispatchMode::kHierarchical}) {
    OnRanks(4, [&](MPI_Comm comm) {
      const int rank = WorldRank();
      auto dispatcher = MakeDispatcher(comm, MakeTopology({2, 2}, 2, 2), {2, 2, 3, 3}, 4, 2, mode);
      Tokens t;
      if (rank < 2) {
        const int64_t tokens = static_cast<int64_t>(slots[rank].size()) / 2;
        t = MakeTokens(tokens, 4, 4, 2, 5 + rank);
        t.slots = slots[rank];
      }
      Result r = DispatchAndCombine(*dispatcher, t);
      EXPECT_EQ(r.out.ToVector(), Reference(t, 2));
      const Expected& e = (mode == DispatchMode::kFlat ? flat : hier)[rank];
      const char* name = mode == DispatchMode::kFlat ? "flat" : "hierarchical";
      EXPECT_EQ(r.traffic.dispatch.bytes, e.dispatch_bytes) << name << " rank " << rank;
      EXPECT_EQ(r.traffic.dispatch.messages, e.dispatch_messages) << name << " rank " << rank;
      EXPECT_EQ(r.traffic.combine.bytes, e.combine_bytes) << name << " rank " << rank;
      EXPECT_EQ(r.traffic.combine.messages, e.combine_messages) << name << " rank " << rank;
    });
  }
}

// Low latency, hand count (the layout of TrafficMatchesHandCount, flat). Every rank sends
// each expert rank one block, an 8-byte count and its records, even when empty (no count
// round tells it there is nothing): rank 0 sends 8 + 2·40 = 88 bytes to each expert rank,
// rank 1 8 + 40 = 48, and expert ranks 2 and 3 send each other an empty block on their
// node. Combine rows go back behind an 8-byte header: 8 + 2·16 to rank 0, 8 + 16 to rank 1.
// With one-record blocks, rank 0's second record to each expert rank overflows into a
// second message: the same bytes in one more message per destination.
TEST_F(DispatchTest, LowLatencyTrafficMatchesHandCount) {
  const std::vector<std::vector<int32_t>> slots = {{0, 1, 0, 2, 3, 2}, {1, 3}};
  using Counts = std::array<int64_t, kNumLinkClasses>;  // intra-node, intra-SN, inter-SN
  for (int64_t capacity : {0, 1}) {
    const int64_t extra = capacity == 1 ? 1 : 0;  // overflow messages per destination
    const std::vector<std::array<Counts, 4>> expected = {
        {Counts{0, 0, 176}, Counts{0, 0, 2 + 2 * extra}, Counts{}, Counts{}},
        {Counts{0, 0, 96}, Counts{0, 0, 2}, Counts{}, Counts{}},
        {Counts{8, 0, 0}, Counts{1, 0, 0}, Counts{0, 0, 64}, Counts{0, 0, 2}},
        {Counts{8, 0, 0}, Counts{1, 0, 0}, Counts{0, 0, 64}, Counts{0, 0, 2}}};
    OnRanks(4, [&](MPI_Comm comm) {
      const int rank = WorldRank();
      auto dispatcher = MakeDispatcher(comm, MakeTopology({2, 2}, 2, 2), {2, 2, 3, 3}, 4, 2,
                                       DispatchMode::kFlat, capacity);
      Tokens t;
      if (rank < 2) {
        t = MakeTokens(static_cast<int64_t>(slots[rank].size()) / 2, 4, 4, 2, 5 + rank);
        t.slots = slots[rank];
      }
      Result r = DispatchAndCombine(*dispatcher, t, ExchangeProtocol::kLowLatency);
      EXPECT_EQ(r.out.ToVector(), Reference(t, 2));
      const std::array<Counts, 4>& e = expected[rank];
      EXPECT_EQ(r.traffic.dispatch.bytes, e[0]) << "capacity " << capacity << " rank " << rank;
      EXPECT_EQ(r.traffic.dispatch.messages, e[1]) << "capacity " << capacity << " rank " << rank;
      EXPECT_EQ(r.traffic.combine.bytes, e[2]) << "capacity " << capacity << " rank " << rank;
      EXPECT_EQ(r.traffic.combine.messages, e[3]) << "capacity " << capacity << " rank " << rank;
    });
  }
}

// With a progress thread the expert rank gets its tokens while the token rank computes
// (sleeps, making no MPI call) after StartDispatch; without one, the records wait for the
// token rank's next call, since only that call posts them after the count round. The clock
// is the machine's monotonic clock, shared by both processes.
TEST_F(DispatchTest, ProgressThreadMovesTokensWhileTheSenderComputes) {
  constexpr int64_t kDim = 8;
  constexpr int kSlots = 4, kTopK = 2;
  constexpr auto kCompute = std::chrono::milliseconds(500);
  for (bool progress : {false, true}) {
    OnRanks(2, [&](MPI_Comm comm) {
      const int rank = WorldRank();
      auto dispatcher =
          MakeDispatcher(comm, MakeTopology({2}, 1, 1), ContiguousPlacement(kSlots, 1, 1), kDim,
                         kTopK, DispatchMode::kFlat, 0, progress);
      const Tokens t = MakeTokens(rank == 0 ? 6 : 0, kDim, kSlots, kTopK, 41);
      MPI_Barrier(comm);
      absl::StatusOr<DispatchHandle> handle =
          dispatcher->StartDispatch(0, ExchangeProtocol::kBulk, t.x, t.slots, t.weights);
      ASSERT_TRUE(handle.ok()) << handle.status();
      double times[2] = {0, 0};  // rank 0: computed until; rank 1: tokens received at
      auto now = [] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
            .count();
      };
      Tensor out;
      if (rank == 0) {
        std::this_thread::sleep_for(kCompute);
        times[0] = now();
      } else {
        ExpertBatch batch;
        ASSERT_TRUE(dispatcher->FinishDispatch(*handle, &batch).ok());
        times[1] = now();
        RunExperts(batch, kDim, kTopK);
        ASSERT_TRUE(dispatcher->StartCombine(*handle).ok());
      }
      ASSERT_TRUE(dispatcher->FinishCombine(*handle, &out).ok());
      EXPECT_EQ(out.ToVector(), Reference(t, kTopK));
      MPI_Allreduce(MPI_IN_PLACE, times, 2, MPI_DOUBLE, MPI_MAX, comm);
      if (progress) {
        EXPECT_LT(times[1], times[0]) << "the records waited for the sender's next MPI call";
      } else {
        EXPECT_GE(times[1], times[0]) << "the records moved without the sender: the test "
                                         "cannot tell the progress thread's effect";
      }
    });
  }
}

// A bad slot on one rank fails that rank with INVALID_ARGUMENT and the others with ABORTED,
// leaving nothing in flight: the next dispatch works.
TEST_F(DispatchTest, InvalidInputAbortsEveryRank) {
  constexpr int64_t kDim = 4;
  constexpr int kSlots = 4, kTopK = 2;
  OnRanks(3, [&](MPI_Comm comm) {
    const int rank = WorldRank();
    auto dispatcher =
        MakeDispatcher(comm, MakeTopology({3}, 2, 1), ContiguousPlacement(kSlots, 2, 1), kDim,
                       kTopK, DispatchMode::kFlat);
    Tokens t = MakeTokens(rank < 2 ? 2 : 0, kDim, kSlots, kTopK, 9 + rank);
    Tokens bad = t;
    if (rank == 1) bad.slots[1] = kSlots;
    for (ExchangeProtocol protocol : {ExchangeProtocol::kBulk, ExchangeProtocol::kLowLatency}) {
      // Low latency: the expert rank learns of the veto from the blocks, the other
      // attention rank from the combine's header.
      ExpertBatch batch;
      Tensor out;
      absl::StatusOr<DispatchHandle> handle =
          dispatcher->StartDispatch(0, protocol, bad.x, bad.slots, bad.weights);
      absl::Status status = handle.status();
      if (status.ok()) status = dispatcher->FinishDispatch(*handle, &batch);
      if (status.ok()) status = dispatcher->StartCombine(*handle);
      if (status.ok()) status = dispatcher->FinishCombine(*handle, &out);
      EXPECT_EQ(status.code(),
                rank == 1 ? absl::StatusCode::kInvalidArgument : absl::StatusCode::kAborted)
          << "rank " << rank << ": " << status;

      EXPECT_EQ(DispatchAndCombine(*dispatcher, t, protocol).out.ToVector(), Reference(t, kTopK));
    }
  });
}

TEST_F(DispatchTest, CreateRejectsMismatchedTopologyAndPlacement) {
  OnRanks(2, [&](MPI_Comm comm) {
    const DispatcherOptions options{4, 2, DispatchMode::kFlat, 2};
    EXPECT_FALSE(Dispatcher::Create(comm, MakeTopology({3}, 2, 1), {1, 1}, options).ok());
    EXPECT_FALSE(Dispatcher::Create(comm, MakeTopology({2}, 1, 1), {1, 2}, options).ok());
    EXPECT_FALSE(
        Dispatcher::Create(comm, MakeTopology({2}, 1, 1), {1, 1}, {0, 2, DispatchMode::kFlat, 2})
            .ok());
  });
}

}  // namespace
}  // namespace dsv4
