// How Engram tables are spread over memory nodes: each Engram layer's table of P rows is
// cut into S = N row ranges (shards) [s·P/N, (s+1)·P/N), and server i holds shards
// i, i−1, …, i−R+1 (mod N), so shard s lives on servers s, s+1, …, s+R−1 (mod N): N
// servers and replication R come from the cluster YAML's engram section.
#ifndef DSV4_ENGRAM_STORE_SHARD_PLAN_H_
#define DSV4_ENGRAM_STORE_SHARD_PLAN_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace dsv4::engram {

struct ShardPlan {
  int num_servers = 1;  // N (= number of shards)
  int replication = 1;  // R ≤ N

  absl::Status Validate() const;
  // Rows [begin, end) of shard s of a table with `rows` rows.
  std::pair<int64_t, int64_t> ShardRows(int64_t rows, int shard) const;
  int ShardOf(int64_t rows, int64_t row) const;
  // Servers holding shard s, preferred (primary) first.
  std::vector<int> Replicas(int shard) const;
  // Shards server i holds, ascending.
  std::vector<int> ShardsOf(int server) const;
};

}  // namespace dsv4::engram

#endif  // DSV4_ENGRAM_STORE_SHARD_PLAN_H_
