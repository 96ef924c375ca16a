// Engram memory nodes for tests: in-process servers on loopback ports the kernel picks,
// and client options pointing at them.
#ifndef DSV4_TESTS_ENGRAM_TEST_UTIL_H_
#define DSV4_TESTS_ENGRAM_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "engram_store/client.h"
#include "engram_store/server.h"
#include "gtest/gtest.h"

namespace dsv4::engram::testing {

// `n` servers of checkpoint `dir` with replication `r` (shard plan {n, r}).
inline std::vector<std::unique_ptr<EngramStoreServer>> StartServers(const std::string& dir, int n,
                                                                    int r,
                                                                    ServerOptions options = {}) {
  std::vector<std::unique_ptr<EngramStoreServer>> servers;
  for (int i = 0; i < n; ++i) {
    TableShardOptions o;
    o.server_index = i;
    o.plan = {n, r};
    absl::StatusOr<std::unique_ptr<TableShards>> shards = TableShards::Load(dir, o);
    EXPECT_TRUE(shards.ok()) << shards.status();
    if (!shards.ok()) return {};
    absl::StatusOr<std::unique_ptr<EngramStoreServer>> server =
        EngramStoreServer::Start(std::move(*shards), "127.0.0.1:0", options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return {};
    servers.push_back(std::move(*server));
  }
  return servers;
}

// Client options for `servers`; a generous deadline so a loaded test machine never
// turns slowness into failover.
inline ClientOptions Options(const std::vector<std::unique_ptr<EngramStoreServer>>& servers,
                             int r) {
  EngramSpec spec;
  for (const auto& s : servers) spec.servers.push_back(s->address());
  spec.replication = r;
  ClientOptions o = ClientOptions::FromCluster(spec);
  o.deadline = absl::Seconds(5);
  return o;
}

}  // namespace dsv4::engram::testing

#endif  // DSV4_TESTS_ENGRAM_TEST_UTIL_H_
