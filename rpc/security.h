// Transport security and client authentication for gRPC: TLS from PEM files (a self-signed
// certificate is enough: clients trust it directly as their CA file) and a shared bearer token
// sent as "authorization: Bearer <token>" metadata. It serves the coordinator's ports (public
// API, engine control), engine leaders dialling a coordinator and the CLI's clients.
//
// Both are optional and independent. Without TLS a token travels in clear text, so it only
// keeps honest clients apart; use both on untrusted networks.
#ifndef DSV4_RPC_SECURITY_H_
#define DSV4_RPC_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/status.h"

namespace dsv4::rpc {

// TLS server credentials from a PEM certificate (chain) and private key file when both are
// set; insecure credentials when both are empty. INVALID_ARGUMENT when only one is set or
// a file does not hold what it should (e.g. cert and key swapped); NOT_FOUND naming the file
// when it cannot be read.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const std::string& cert_file, const std::string& key_file);

// Client side: TLS trusting the PEM certificates in `ca_file` (for a self-signed server, its
// own certificate) when non-empty, else insecure. NOT_FOUND naming the file when it cannot
// be read, INVALID_ARGUMENT when it holds no certificate. The server's certificate must name
// the host the client dials (subjectAltName DNS or IP).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const std::string& ca_file);

// The bearer token in `path`: its first line, whitespace-trimmed. NOT_FOUND naming the file
// when it cannot be read; INVALID_ARGUMENT naming it when the token is empty or has
// characters other than printable ASCII without spaces (gRPC metadata could not carry it).
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// What a client (dsv4 generate / status, an engine leader) needs to call a coordinator:
// credentials from MakeChannelCredentials(`ca_file`) and the token of `token_file` (empty
// file name: no token). Errors as those two give.
struct ClientSecurity {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string token;
};
absl::StatusOr<ClientSecurity> LoadClientSecurity(const std::string& ca_file,
                                                  const std::string& token_file);

// Server side: checks the call's "authorization: Bearer <token>" metadata against `token`,
// comparing in constant time so the response time does not reveal a matching prefix. OK
// when `token` is empty (authentication off); otherwise UNAUTHENTICATED, "missing
// authorization metadata: send 'authorization: Bearer <token>'" or "invalid bearer token".
grpc::Status CheckBearerToken(const grpc::ServerContext& context, const std::string& token);

// Client side: adds the metadata CheckBearerToken expects; no-op when `token` is empty.
void AddBearerToken(grpc::ClientContext* context, const std::string& token);

}  // namespace dsv4::rpc

#endif  // DSV4_RPC_SECURITY_H_
