#include "cli/coordinator_client.h"

#include "absl/flags/flag.h"
#include "cli/common_flags.h"
#include "rpc/security.h"

namespace dsv4::cli {

void CoordinatorChannel::Authorize(grpc::ClientContext* context) const {
  rpc::AddBearerToken(context, token);
}

absl::StatusOr<CoordinatorChannel> DialCoordinator() {
  absl::StatusOr<rpc::ClientSecurity> security =
      rpc::LoadClientSecurity(absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_token_file));
  if (!security.ok()) return security.status();
  CoordinatorChannel out;
  out.channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), security->credentials);
  out.token = security->token;
  return out;
}

}  // namespace dsv4::cli
