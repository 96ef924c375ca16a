// How dsv4's client commands (generate, status) reach a coordinator: its address, with TLS
// when --tls-ca names the certificate to trust and a bearer token when --token-file is set.
#ifndef DSV4_CLI_COORDINATOR_CLIENT_H_
#define DSV4_CLI_COORDINATOR_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace dsv4::cli {

struct CoordinatorChannel {
  std::shared_ptr<grpc::Channel> channel;
  std::string token;  // empty: no authentication
  // Adds the authorization metadata to a call's context.
  void Authorize(grpc::ClientContext* context) const;
};

// From the --server, --tls-ca and --token-file flags; errors name the file.
absl::StatusOr<CoordinatorChannel> DialCoordinator();

}  // namespace dsv4::cli

#endif  // DSV4_CLI_COORDINATOR_CLIENT_H_
