// Engram memory nodes for tests: in-process servers on loopback ports the kernel picks,
// and client options pointing at them.
#ifndef DSV4_TESTS_ENGRAM_TEST_UTIL_H_
#define DSV4_TESTS_ENGRAM_TEST_UTIL_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engram_store/client.h"
#include "engram_store/server.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

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

// `n` dsv4-engram-store processes of checkpoint `dir` with replication `r`, each on a
// loopback port it picks, and the addresses they report once serving. The processes die
// with this object. `extra_flags` go to every process (e.g. " --token_file F").
struct ServerProcesses {
  std::vector<std::unique_ptr<dsv4::testing::Process>> processes;
  std::vector<std::string> addresses;
};
inline ServerProcesses StartServerProcesses(const std::string& dir, int n, int r,
                                            const std::string& extra_flags = "") {
  ServerProcesses s;
  for (int i = 0; i < n; ++i) {
    s.processes.push_back(std::make_unique<dsv4::testing::Process>(
        absl::StrCat(DSV4_BIN_DIR, "/dsv4-engram-store --checkpoint ", dir, " --listen 127.0.0.1:0",
                     " --num_servers ", n, " --replication ", r, " --index ", i, extra_flags)));
  }
  const std::string ready = "listening on ";
  for (const auto& p : s.processes) {
    // The server writes the line with one flush (std::endl), so it arrives whole.
    const bool up = p->WaitFor(ready, std::chrono::seconds(30));
    EXPECT_TRUE(up) << p->output();
    if (!up) return {};
    const size_t at = p->output().find(ready) + ready.size();
    s.addresses.push_back(p->output().substr(at, p->output().find('\n', at) - at));
  }
  return s;
}

}  // namespace dsv4::engram::testing

#endif  // DSV4_TESTS_ENGRAM_TEST_UTIL_H_
