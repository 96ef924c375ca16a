#include "engram_store/shard_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dsv4::engram {

absl::Status ShardPlan::Validate() const {
  if (num_servers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Engram store: need at least one server, got ", num_servers));
  }
  if (replication < 1 || replication > num_servers) {
    return absl::InvalidArgumentError(absl::StrCat("Engram store: replication must be in [1, ",
                                                   num_servers, "], got ", replication));
  }
  return absl::OkStatus();
}

std::pair<int64_t, int64_t> ShardPlan::ShardRows(int64_t rows, int shard) const {
  // 128-bit products: rows · shard overflows int64 only for absurd tables, but cheaply safe.
  auto edge = [&](int s) {
    return static_cast<int64_t>(static_cast<__int128>(rows) * s / num_servers);
  };
  return {edge(shard), edge(shard + 1)};
}

int ShardPlan::ShardOf(int64_t rows, int64_t row) const {
  // The largest s with ShardRows(s).first ≤ row; the estimate is exact or one too high.
  int s = static_cast<int>(static_cast<__int128>(row) * num_servers / rows);
  s = std::min(s, num_servers - 1);
  while (s > 0 && ShardRows(rows, s).first > row) --s;
  while (s + 1 < num_servers && ShardRows(rows, s + 1).first <= row) ++s;
  return s;
}

std::vector<int> ShardPlan::Replicas(int shard) const {
  std::vector<int> servers;
  for (int r = 0; r < replication; ++r) servers.push_back((shard + r) % num_servers);
  return servers;
}

std::vector<int> ShardPlan::ShardsOf(int server) const {
  std::vector<int> shards;
  for (int r = 0; r < replication; ++r) {
    shards.push_back(((server - r) % num_servers + num_servers) % num_servers);
  }
  std::sort(shards.begin(), shards.end());
  return shards;
}

}  // namespace dsv4::engram
