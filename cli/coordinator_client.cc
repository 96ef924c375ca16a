#include "cli/coordinator_client.h"

#include "absl/flags/flag.h"
#include "cli/common_flags.h"
#include "coordinator/security.h"

namespace dsv4::cli {

void CoordinatorChannel::Authorize(grpc::ClientContext* context) const {
  coordinator::AddBearerToken(context, token);
}

absl::StatusOr<CoordinatorChannel> DialCoordinator() {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      coordinator::MakeChannelCredentials(absl::GetFlag(FLAGS_tls_ca));
  if (!credentials.ok()) return credentials.status();
  CoordinatorChannel out;
  if (!absl::GetFlag(FLAGS_token_file).empty()) {
    absl::StatusOr<std::string> token = coordinator::ReadTokenFile(absl::GetFlag(FLAGS_token_file));
    if (!token.ok()) return token.status();
    out.token = *token;
  }
  out.channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), *credentials);
  return out;
}

}  // namespace dsv4::cli
