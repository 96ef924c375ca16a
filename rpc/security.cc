#include "rpc/security.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
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

// The token of the call's "authorization: Bearer <token>" metadata; UNAUTHENTICATED when
// there is none.
grpc::Status PresentedToken(const grpc::ServerContext& context, absl::string_view* token) {
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
  *token = absl::StripAsciiWhitespace(value.substr(prefix));
  return grpc::Status::OK;
}

// What ReadTokenFile accepts as a token: printable ASCII without spaces.
bool ValidToken(absl::string_view token) {
  if (token.empty()) return false;
  for (const char c : token) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

bool ValidKeyName(absl::string_view name) {
  if (name.empty() || name.size() > 64 || name == ApiKeys::kAnonymous) return false;
  for (const char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

}  // namespace

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    diff |= static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

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
  absl::string_view presented;
  if (grpc::Status s = PresentedToken(context, &presented); !s.ok()) return s;
  if (!ConstantTimeEquals(presented, token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

void AddBearerToken(grpc::ClientContext* context, const std::string& token) {
  if (token.empty()) return;
  context->AddMetadata(kAuthorizationKey, absl::StrCat(kBearerPrefix, token));
}

std::array<uint8_t, 32> Sha256(absl::string_view data) {
  std::array<uint8_t, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

absl::Status CheckPrivateFile(const std::string& path, absl::string_view what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot read ", what, " file ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " file ", path, " is not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " file ", path, " is accessible by other users (mode ",
                     absl::StrFormat("%04o", st.st_mode & 07777), "): run chmod 600 ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadOrCreateTokenFile(const std::string& path, bool* created) {
  *created = false;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    unsigned char bytes[32];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
      ::close(fd);
      ::unlink(path.c_str());
      return absl::InternalError("cannot draw random bytes for the admin token");
    }
    const std::string token =
        absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), sizeof(bytes)));
    const std::string line = token + "\n";
    const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    const int error = errno;
    ::close(fd);
    if (!written) {
      ::unlink(path.c_str());
      return absl::InternalError(
          absl::StrCat("cannot write admin token file ", path, ": ", std::strerror(error)));
    }
    *created = true;
  } else if (errno != EEXIST) {
    return absl::NotFoundError(
        absl::StrCat("cannot create admin token file ", path, ": ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(CheckPrivateFile(path, "admin token"));
  return ReadTokenFile(path);
}

absl::StatusOr<ApiKeys> ApiKeys::LoadFile(const std::string& path) {
  RETURN_IF_ERROR(CheckPrivateFile(path, "API key"));
  ASSIGN_OR_RETURN(std::string contents, ReadFile(path, "API key"));
  ApiKeys keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    const std::string where = absl::StrCat("API key file ", path, ":", line_number, ": ");
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "expected \"<name> <token>\" (2 fields separated by spaces), got ",
                       fields.size(), " fields"));
    }
    if (!ValidKeyName(fields[0])) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "key name must be 1-64 of [A-Za-z0-9._-] and not \"", kAnonymous, "\""));
    }
    if (!ValidToken(fields[1]) || fields[1].size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, "the token of key \"", fields[0],
          "\" must be at least 16 printable ASCII characters without spaces (e.g. openssl "
          "rand -hex 32)"));
    }
    if (absl::Status s = keys.Add(std::string(fields[0]), std::string(fields[1])); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, s.message()));
    }
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("API key file ", path, " holds no key: write one \"<name> <token>\" a line"));
  }
  return keys;
}

absl::Status ApiKeys::Add(const std::string& name, const std::string& token) {
  for (const Key& key : keys_) {
    if (key.name == name) {
      return absl::InvalidArgumentError(absl::StrCat("key name \"", name, "\" is used twice"));
    }
  }
  if (Find(token) >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("key \"", name, "\" has the same token as another key"));
  }
  keys_.push_back({name, Sha256(token)});
  return absl::OkStatus();
}

std::vector<std::string> ApiKeys::names() const {
  std::vector<std::string> out;
  for (const Key& key : keys_) out.push_back(key.name);
  return out;
}

int ApiKeys::Find(absl::string_view token) const {
  const std::array<uint8_t, 32> digest = Sha256(token);
  int found = -1;
  for (size_t i = 0; i < keys_.size(); ++i) {
    uint8_t diff = 0;
    for (size_t b = 0; b < digest.size(); ++b) diff |= digest[b] ^ keys_[i].digest[b];
    // Branch-free select: every key is compared whatever matched before.
    const int match = static_cast<int>(diff == 0);
    found = match * static_cast<int>(i) + (1 - match) * found;
  }
  return found;
}

bool ApiKeys::Matches(absl::string_view token) const { return Find(token) >= 0; }

grpc::Status ApiKeys::Authenticate(const grpc::ServerContext& context, std::string* name) const {
  if (keys_.empty()) {
    *name = kAnonymous;
    return grpc::Status::OK;
  }
  absl::string_view presented;
  if (grpc::Status s = PresentedToken(context, &presented); !s.ok()) return s;
  const int index = Find(presented);
  if (index < 0) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  *name = keys_[index].name;
  return grpc::Status::OK;
}

}  // namespace dsv4::rpc
