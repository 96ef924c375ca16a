// Transport security and client authentication for gRPC: TLS from PEM files (a self-signed
// certificate is enough: clients trust it directly as their CA file) and a shared bearer token
// sent as "authorization: Bearer <token>" metadata. It serves the coordinator's ports (public
// API, engine control), engine leaders dialling a coordinator and the CLI's clients.
//
// Both are optional and independent. Without TLS a token travels in clear text, so it only
// keeps honest clients apart; use both on untrusted networks.
#ifndef DSV4_RPC_SECURITY_H_
#define DSV4_RPC_SECURITY_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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

// Compares without an early exit: the time taken depends only on the lengths (for secrets).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// Client side: adds the metadata CheckBearerToken expects; no-op when `token` is empty.
void AddBearerToken(grpc::ClientContext* context, const std::string& token);

// SHA-256 of `data` (32 raw bytes).
std::array<uint8_t, 32> Sha256(absl::string_view data);

// OK when `path` is a regular file only its owner can access (mode 0600 or 0400, as ssh
// wants of private keys); otherwise FAILED_PRECONDITION naming the file, its mode and the
// fix (chmod 600). NOT_FOUND when it does not exist.
absl::Status CheckPrivateFile(const std::string& path, absl::string_view what);

// The admin credential: the token of `path` (ReadTokenFile) after CheckPrivateFile. When the
// file does not exist, creates it (mode 0600, never overwriting) with a fresh random token
// of 256 bits in hex and sets *created.
absl::StatusOr<std::string> ReadOrCreateTokenFile(const std::string& path, bool* created);

// The public API's credentials: named bearer tokens ("API keys"), loaded from a key file
// with one key a line, "<name> <token>"; '#' starts a comment line, blank lines are skipped.
// Names are 1-64 of [A-Za-z0-9._-] (they become Prometheus label values and log fields;
// "anonymous" is reserved), tokens at least 16 printable ASCII characters without spaces;
// names and tokens are unique. The file must be private to its owner (CheckPrivateFile).
// Errors name the file and line, never a token.
//
// Authenticate compares the presented token with every key by SHA-256 digest in constant
// time (no early exit, independent of the tokens' lengths), so response times reveal
// neither a matching prefix nor which key came close.
class ApiKeys {
 public:
  // The caller name for calls without authentication (no key configured).
  static constexpr char kAnonymous[] = "anonymous";

  ApiKeys() = default;  // no keys: authentication off
  static absl::StatusOr<ApiKeys> LoadFile(const std::string& path);
  // Adds one key (e.g. the deprecated coordinator.auth_token_file as "default");
  // INVALID_ARGUMENT when the name or token is already taken.
  absl::Status Add(const std::string& name, const std::string& token);

  bool empty() const { return keys_.empty(); }
  std::vector<std::string> names() const;
  // Whether `token` is one of the keys (constant time).
  bool Matches(absl::string_view token) const;
  // OK with the caller's key name in *name (kAnonymous when there are no keys); otherwise
  // UNAUTHENTICATED as CheckBearerToken says it, revealing nothing about the keys.
  grpc::Status Authenticate(const grpc::ServerContext& context, std::string* name) const;

 private:
  struct Key {
    std::string name;
    std::array<uint8_t, 32> digest;  // SHA-256 of the token: the token itself is not kept
  };
  // Index of the key whose token is `token`, -1 for none; constant time.
  int Find(absl::string_view token) const;
  std::vector<Key> keys_;
};

}  // namespace dsv4::rpc

#endif  // DSV4_RPC_SECURITY_H_
