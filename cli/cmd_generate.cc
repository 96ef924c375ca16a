// dsv4 generate: streams a generation from a coordinator, printing text as it arrives.
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/cli_util.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/coordinator_client.h"
#include "grpcpp/grpcpp.h"
#include "proto/inference.grpc.pb.h"
#include "rpc/status.h"

// Sampling flags are shared with `dsv4 run` (defined in cmd_run.cc).
ABSL_FLAG(int32_t, max_tokens, 64, "tokens to generate at most");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "stop strings, comma-separated: generation ends before the first one");
ABSL_FLAG(std::string, request_id, "",
          "client request id: a retry with the same id streams the same request");
ABSL_FLAG(bool, ignore_eos, false, "generate past the end-of-sequence token");

namespace dsv4::cli {
namespace {

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_EOS:
      return "eos";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

}  // namespace

int GenerateMain(int argc, char** argv) {
  const std::vector<std::string> args =
      ParseFlags(argc, argv,
                 "dsv4 generate [--server HOST:PORT] [--max-tokens N] [--temperature T --top-p P "
                 "--top-k K --seed S]\n"
                 "              [--stop S1,S2] [--request-id ID] [--ignore-eos]\n"
                 "              [--tls-ca CERT.pem] [--token-file FILE] \"prompt\"",
                 "cmd_generate.cc",
                 {"server", "temperature", "top_p", "top_k", "seed", "tls_ca", "token_file"});
  if (args.empty()) return ExitCode(absl::InvalidArgumentError("give a prompt"), "generate");
  v1::GenerateRequest request;
  request.set_text(absl::StrJoin(args, " "));
  request.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) request.add_stop(stop);
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  request.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  request.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  request.mutable_sampling()->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  request.mutable_sampling()->set_top_k(absl::GetFlag(FLAGS_top_k));
  request.mutable_sampling()->set_seed(absl::GetFlag(FLAGS_seed));

  absl::StatusOr<CoordinatorChannel> coordinator = DialCoordinator();
  if (!coordinator.ok()) return ExitCode(coordinator.status(), "generate");
  auto stub = v1::Inference::NewStub(coordinator->channel);
  grpc::ClientContext context;
  coordinator->Authorize(&context);
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse response;
  bool any_text = false;
  while (reader->Read(&response)) {
    std::cout << response.text() << std::flush;
    any_text = any_text || !response.text().empty();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      if (any_text) std::cout << "\n";
      std::cerr << "[finish: " << FinishReasonName(response.finish_reason())
                << ", prompt tokens: " << response.usage().prompt_tokens()
                << ", completion tokens: " << response.usage().completion_tokens()
                << ", ttft: " << response.timings().time_to_first_token_ms() << " ms]\n";
    }
  }
  const grpc::Status s = reader->Finish();
  if (!s.ok()) {
    if (any_text) std::cout << "\n";
    return ExitCode(rpc::FromGrpc(s, {}, rpc::CodeName::kInclude), "generate");
  }
  return 0;
}

}  // namespace dsv4::cli
