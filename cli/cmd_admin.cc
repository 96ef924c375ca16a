// dsv4 admin: the coordinator's operator API (proto/admin.proto) on its admin address.
//   dsv4 admin rebalance ENGINE   new expert placement from the engine's observed load
//   dsv4 admin drain ENGINE       admit nothing new, finish what runs, leave
//   dsv4 admin shutdown ENGINE    stop now; its requests are replayed elsewhere
#include <chrono>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "grpcpp/grpcpp.h"
#include "proto/admin.grpc.pb.h"
#include "rpc/security.h"
#include "rpc/status.h"

ABSL_FLAG(std::string, admin, "127.0.0.1:50052", "admin: the coordinator's admin address");
ABSL_FLAG(std::string, reason, "operator request", "admin shutdown: reason passed to the engine");

namespace dsv4::cli {

int AdminMain(int argc, char** argv) {
  const std::vector<std::string> args = ParseFlags(
      argc, argv,
      "dsv4 admin rebalance|drain|shutdown ENGINE_ID --token-file FILE [--admin HOST:PORT]\n"
      "           [--reason TEXT]\n\n"
      "--token-file: the coordinator's admin token (coordinator.admin_token_file; by default\n"
      "           <cluster yaml stem>.admin-token next to the YAML, created by the "
      "coordinator).\n\n"
      "rebalance: recompute the engine's expert placement (EPLB) from the expert load it\n"
      "           reported and apply it at a step boundary; no request is dropped.\n"
      "drain:     the engine admits nothing new, finishes what it runs and leaves.\n"
      "shutdown:  the engine stops now; the coordinator replays its requests.",
      "cmd_admin.cc", {"token_file"});
  if (args.size() != 2) {
    return ExitCode(absl::InvalidArgumentError("give an action (rebalance, drain, shutdown) and "
                                               "an engine id (see dsv4 status)"),
                    "admin");
  }
  const std::string& action = args[0];
  if (absl::GetFlag(FLAGS_token_file).empty()) {
    return ExitCode(absl::InvalidArgumentError(
                        "give the admin token with --token-file (coordinator.admin_token_file; "
                        "by default <cluster yaml stem>.admin-token next to the cluster YAML)"),
                    "admin");
  }
  absl::StatusOr<std::string> token = rpc::ReadTokenFile(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) return ExitCode(token.status(), "admin");
  auto stub = admin::v1::Admin::NewStub(
      grpc::CreateChannel(absl::GetFlag(FLAGS_admin), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
  rpc::AddBearerToken(&context, *token);
  grpc::Status s;
  if (action == "rebalance") {
    admin::v1::RebalanceRequest request;
    request.set_engine_id(args[1]);
    admin::v1::RebalanceResponse response;
    s = stub->Rebalance(&context, request, &response);
    if (s.ok()) {
      std::cout << absl::StrFormat(
          "engine %s rebalanced before step %d: mean max/mean expert-rank load %.3f (plain "
          "placement %.3f)\n%s\n",
          args[1], response.step(), response.imbalance(), response.baseline_imbalance(),
          response.placement_summary());
    }
  } else if (action == "drain") {
    admin::v1::DrainEngineRequest request;
    request.set_engine_id(args[1]);
    admin::v1::DrainEngineResponse response;
    s = stub->DrainEngine(&context, request, &response);
    if (s.ok()) std::cout << "engine " << args[1] << " is draining\n";
  } else if (action == "shutdown") {
    admin::v1::ShutdownEngineRequest request;
    request.set_engine_id(args[1]);
    request.set_reason(absl::GetFlag(FLAGS_reason));
    admin::v1::ShutdownEngineResponse response;
    s = stub->ShutdownEngine(&context, request, &response);
    if (s.ok()) std::cout << "engine " << args[1] << " is shutting down\n";
  } else {
    return ExitCode(absl::InvalidArgumentError(absl::StrCat("unknown action \"", action,
                                                            "\": rebalance, drain or shutdown")),
                    "admin");
  }
  if (!s.ok()) {
    return ExitCode(rpc::FromGrpc(s, absl::GetFlag(FLAGS_admin), rpc::CodeName::kInclude), "admin");
  }
  return 0;
}

}  // namespace dsv4::cli
