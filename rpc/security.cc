#include "rpc/security.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/status_macros.h"

namespace dsv4::rpc {
namespace {

constexpr char kAuthorizationKey[] = "authorization";  // gRPC metadata keys are lower case
constexpr char kBearerPrefix[] = "Bearer ";

// The whole file; NOT_FOUND naming it and the reason when it cannot be read.
absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", what, " file ", path, ": ", std::strerror(errno)));
  }
  std::string contents;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) contents.append(buffer, n);
  const bool failed = std::ferror(file);
  const int error = errno;  // e.g. EISDIR for a directory, which fopen accepts
  std::fclose(file);
  if (failed) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", what, " file ", path, ": ", std::strerror(error)));
  }
  return contents;
}

// Compares without an early exit, so the time taken depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const std::string& cert_file, const std::string& key_file) {
  if (cert_file.empty() && key_file.empty()) return grpc::InsecureServerCredentials();
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS needs both a certificate and a private key file, got only the ",
                     cert_file.empty() ? absl::StrCat("key (", key_file, ")")
                                       : absl::StrCat("certificate (", cert_file, ")")));
  }
  ASSIGN_OR_RETURN(std::string cert, ReadFile(cert_file, "TLS certificate"));
  ASSIGN_OR_RETURN(std::string key, ReadFile(key_file, "TLS private key"));
  // gRPC would only log a bad PEM and fail the server's start without saying which file
  // was wrong; catch the usual mistakes (wrong file, cert and key swapped) here.
  if (!absl::StrContains(cert, "-----BEGIN CERTIFICATE-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS certificate file ", cert_file, " holds no PEM certificate"));
  }
  if (!absl::StrContains(key, "PRIVATE KEY-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS private key file ", key_file, " holds no PEM private key"));
  }
  grpc::SslServerCredentialsOptions options;
  options.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const std::string& ca_file) {
  if (ca_file.empty()) return grpc::InsecureChannelCredentials();
  ASSIGN_OR_RETURN(std::string ca, ReadFile(ca_file, "TLS CA certificate"));
  if (!absl::StrContains(ca, "-----BEGIN CERTIFICATE-----")) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS CA certificate file ", ca_file, " holds no PEM certificate"));
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = std::move(ca);
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string contents, ReadFile(path, "token"));
  absl::string_view line = contents;
  line = line.substr(0, line.find('\n'));
  line = absl::StripAsciiWhitespace(line);
  if (line.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file ", path, " is empty: its first line must hold the token"));
  }
  for (const char c : line) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token in ", path, " must be printable ASCII without spaces (gRPC metadata carries it)"));
    }
  }
  return std::string(line);
}

absl::StatusOr<ClientSecurity> LoadClientSecurity(const std::string& ca_file,
                                                  const std::string& token_file) {
  ClientSecurity out;
  ASSIGN_OR_RETURN(out.credentials, MakeChannelCredentials(ca_file));
  if (!token_file.empty()) {
    ASSIGN_OR_RETURN(out.token, ReadTokenFile(token_file));
  }
  return out;
}

grpc::Status CheckBearerToken(const grpc::ServerContext& context, const std::string& token) {
  if (token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kAuthorizationKey);
  const absl::string_view value = it == metadata.end()
                                      ? absl::string_view()
                                      : absl::string_view(it->second.data(), it->second.size());
  // The scheme is case-insensitive (RFC 7235); another scheme is as good as none.
  const size_t prefix = sizeof(kBearerPrefix) - 1;
  if (value.size() < prefix || !absl::EqualsIgnoreCase(value.substr(0, prefix), kBearerPrefix)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing authorization metadata: send 'authorization: Bearer <token>'");
  }
  if (!ConstantTimeEquals(absl::StripAsciiWhitespace(value.substr(prefix)), token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

void AddBearerToken(grpc::ClientContext* context, const std::string& token) {
  if (token.empty()) return;
  context->AddMetadata(kAuthorizationKey, absl::StrCat(kBearerPrefix, token));
}

}  // namespace dsv4::rpc
