#include "cli/coordinator_client.h"

#include "absl/flags/flag.h"
#include "cli/common_flags.h"
#include "core/status_macros.h"
#include "rpc/security.h"

namespace dsv4::cli {

void CoordinatorChannel::Authorize(grpc::ClientContext* context) const {
  rpc::AddBearerToken(context, token);
}

absl::StatusOr<CoordinatorChannel> DialCoordinator() {
  ASSIGN_OR_RETURN(
      rpc::ClientSecurity security,
      rpc::LoadClientSecurity(absl::GetFlag(FLAGS_tls_ca), absl::GetFlag(FLAGS_token_file)));
  CoordinatorChannel out;
  out.channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), security.credentials);
  out.token = security.token;
  return out;
}

}  // namespace dsv4::cli
