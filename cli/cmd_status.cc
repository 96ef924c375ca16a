// dsv4 status: the coordinator's GetClusterStatus as a table.
#include <chrono>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/coordinator_client.h"
#include "core/units.h"
#include "grpcpp/grpcpp.h"
#include "proto/inference.grpc.pb.h"

namespace dsv4::cli {
namespace {

void PrintStatus(const v1::ClusterStatus& status) {
  std::cout << "engines: " << status.engines_size() << "   queue depth: " << status.queue_depth()
            << "\n";
  if (status.engines_size() == 0) {
    std::cout << "no engine connected\n";
    return;
  }
  // LINK/STEP: link bytes per step, measured / modelled, at the target's wire format.
  std::cout << absl::StrFormat("\n%-16s %-11s %5s %8s %7s %11s %11s %-21s %8s\n", "ENGINE", "STATE",
                               "RANKS", "RUNNING", "KV", "STEP ms", "MODEL ms",
                               "LINK/STEP meas/model", "RESTARTS");
  for (const v1::EngineStatus& e : status.engines()) {
    const std::string link = absl::StrCat(FormatBytes(e.measured_link_bytes_per_step()), "/",
                                          FormatBytes(e.modelled_link_bytes_per_step()));
    std::cout << absl::StrFormat("%-16s %-11s %5d %8d %6.1f%% %11.2f %11.3f %-21s %8d\n", e.id(),
                                 e.state(), e.ranks_size(), e.running_requests(),
                                 100 * e.kv_usage(), e.measured_step_ms(), e.modelled_step_ms(),
                                 link, e.restarts());
  }
  for (const v1::EngineStatus& e : status.engines()) {
    // BLOCKED: share of the rank's step time spent waiting on the MoE dispatch and combine.
    std::cout << absl::StrFormat(
        "\n%s ranks (weight bytes; blocked on the data plane):\n  %-5s %-10s %-20s %-11s %-11s "
        "%s\n",
        e.id(), "RANK", "ROLE", "POSITION", "RESIDENT", "RELEASED", "BLOCKED");
    for (const v1::RankStatus& r : e.ranks()) {
      std::cout << absl::StrFormat(
          "  %-5d %-10s %-20s %-11s %-11s %.1f%%\n", r.rank(), r.role(), r.position(),
          FormatBytes(static_cast<double>(r.resident_bytes())),
          FormatBytes(static_cast<double>(r.released_bytes())), 100 * r.blocked_fraction());
    }
  }
  if (!status.placement_summary().empty()) {
    // The policy and the overall balance; per-layer lines would be 61 at V4-Pro scale.
    const std::vector<std::string> lines = absl::StrSplit(status.placement_summary(), '\n');
    std::cout << "\nplacement: " << lines[0] << "\n";
    if (lines.size() > 1) std::cout << lines[1] << "\n";
  }
}

}  // namespace

int StatusMain(int argc, char** argv) {
  const std::vector<std::string> args = ParseFlags(
      argc, argv, "dsv4 status [--server HOST:PORT] [--tls-ca CERT.pem] [--token-file FILE]",
      "cmd_status.cc", {"server", "tls_ca", "token_file"});
  if (!args.empty()) return ExitCode(absl::InvalidArgumentError("takes no arguments"), "status");
  const std::string server = absl::GetFlag(FLAGS_server);
  absl::StatusOr<CoordinatorChannel> coordinator = DialCoordinator();
  if (!coordinator.ok()) return ExitCode(coordinator.status(), "status");
  auto stub = v1::Inference::NewStub(coordinator->channel);
  grpc::ClientContext context;
  coordinator->Authorize(&context);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ClusterStatus status;
  const grpc::Status s = stub->GetClusterStatus(&context, v1::ClusterStatusRequest(), &status);
  if (!s.ok()) {
    return ExitCode(absl::UnavailableError(absl::StrCat(server, ": ", s.error_message())),
                    "status");
  }
  PrintStatus(status);
  return 0;
}

}  // namespace dsv4::cli
