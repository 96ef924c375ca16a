// TLS credentials and bearer-token authentication against a real gRPC server on a loopback
// socket, with self-signed certificates made by the openssl CLI: a client trusting the
// server's certificate gets through; insecure clients, clients trusting another certificate
// and clients dialling a host the certificate does not name do not; the token check accepts the
// right token only. Also the files' errors.
#include <chrono>
#include <fstream>
#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "proto/inference.grpc.pb.h"
#include "rpc/security.h"
#include "tests/test_util.h"

namespace dsv4::rpc {
namespace {

using ::dsv4::testing::WriteFile;

using ::testing::HasSubstr;

// Answers Tokenize with CheckBearerToken's verdict; the other methods are not used.
class TokenCheckingService final : public v1::Inference::Service {
 public:
  explicit TokenCheckingService(std::string token) : token_(std::move(token)) {}
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* /*request*/,
                        v1::TokenizeResponse* response) override {
    grpc::Status status = CheckBearerToken(*context, token_);
    if (status.ok()) response->add_token_ids(1);
    return status;
  }

 private:
  const std::string token_;
};

// A started server on 127.0.0.1 with the test service.
struct TestServer {
  TestServer(const std::shared_ptr<grpc::ServerCredentials>& credentials, std::string token)
      : service(std::move(token)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~TestServer() {
    if (server) server->Shutdown();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }

  TokenCheckingService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// One Tokenize call; the deadline only keeps a broken setup from hanging the test.
grpc::Status CallTokenize(const std::string& address,
                          const std::shared_ptr<grpc::ChannelCredentials>& credentials,
                          const std::string& token, const std::string& raw_authorization = "") {
  std::unique_ptr<v1::Inference::Stub> stub =
      v1::Inference::NewStub(grpc::CreateChannel(address, credentials));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  AddBearerToken(&context, token);
  if (!raw_authorization.empty()) context.AddMetadata("authorization", raw_authorization);
  v1::TokenizeRequest request;
  request.set_text("hello");
  v1::TokenizeResponse response;
  grpc::Status status = stub->Tokenize(&context, request, &response);
  if (status.ok()) {
    EXPECT_EQ(response.token_ids_size(), 1);
  }
  return status;
}

class SecurityTest : public ::testing::Test {
 protected:
  // Self-signed certificates, made once: the server's and an unrelated one for localhost /
  // 127.0.0.1, and one naming only another host.
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir("dsv4-security-test");
    for (const auto& [name, subject_alt_name] :
         {std::pair<std::string, std::string>{"server", "DNS:localhost,IP:127.0.0.1"},
          {"other", "DNS:localhost,IP:127.0.0.1"},
          {"wronghost", "DNS:wrong.example"}}) {
      const testing::CommandResult result = testing::RunCommand(absl::StrCat(
          "/usr/bin/openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -addext "
          "subjectAltName=",
          subject_alt_name, " -days 1 -keyout ", Path(name + ".key"), " -out ",
          Path(name + ".crt")));
      ASSERT_EQ(result.exit_code, 0) << result.output;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string Path(const std::string& name) { return dir_->path() + "/" + name; }

  static std::shared_ptr<grpc::ServerCredentials> ServerTls(const std::string& name = "server") {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
        MakeServerCredentials(Path(name + ".crt"), Path(name + ".key"));
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return credentials.ok() ? *credentials : nullptr;
  }
  static std::shared_ptr<grpc::ChannelCredentials> ClientCredentials(const std::string& ca) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
        MakeChannelCredentials(ca);
    EXPECT_TRUE(credentials.ok()) << credentials.status();
    return credentials.ok() ? *credentials : nullptr;
  }

  static testing::TempDir* dir_;
};

testing::TempDir* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, TlsClientTrustingTheCertificateGetsThrough) {
  std::shared_ptr<grpc::ServerCredentials> tls = ServerTls();
  ASSERT_NE(tls, nullptr);
  TestServer server(tls, "");
  ASSERT_NE(server.server, nullptr);

  grpc::Status trusted = CallTokenize(server.address(), ClientCredentials(Path("server.crt")), "");
  EXPECT_TRUE(trusted.ok()) << trusted.error_code() << " " << trusted.error_message();

  // Plaintext HTTP/2 to a TLS port: the handshake fails.
  grpc::Status insecure = CallTokenize(server.address(), ClientCredentials(""), "");
  EXPECT_EQ(insecure.error_code(), grpc::StatusCode::UNAVAILABLE) << insecure.error_message();

  // TLS, but the server's certificate is not the one the client trusts.
  grpc::Status untrusted = CallTokenize(server.address(), ClientCredentials(Path("other.crt")), "");
  EXPECT_EQ(untrusted.error_code(), grpc::StatusCode::UNAVAILABLE) << untrusted.error_message();
}

// The client trusts the server's certificate, but it names another host than the one
// dialled: the handshake fails.
TEST_F(SecurityTest, TlsRefusesACertificateForAnotherHost) {
  std::shared_ptr<grpc::ServerCredentials> tls = ServerTls("wronghost");
  ASSERT_NE(tls, nullptr);
  TestServer server(tls, "");
  ASSERT_NE(server.server, nullptr);
  grpc::Status s = CallTokenize(server.address(), ClientCredentials(Path("wronghost.crt")), "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(SecurityTest, InsecureServerAndClient) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> insecure = MakeServerCredentials("", "");
  ASSERT_TRUE(insecure.ok()) << insecure.status();
  TestServer server(*insecure, "");
  ASSERT_NE(server.server, nullptr);
  grpc::Status status = CallTokenize(server.address(), ClientCredentials(""), "");
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(SecurityTest, BearerTokenChecked) {
  const std::string token = "s3cret-token";
  TestServer server(ServerTls(), token);
  ASSERT_NE(server.server, nullptr);
  std::shared_ptr<grpc::ChannelCredentials> tls = ClientCredentials(Path("server.crt"));

  grpc::Status right = CallTokenize(server.address(), tls, token);
  EXPECT_TRUE(right.ok()) << right.error_message();

  grpc::Status wrong = CallTokenize(server.address(), tls, "s3cret-tokeN");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message(), "invalid bearer token");
  grpc::Status prefix = CallTokenize(server.address(), tls, "s3cret");
  EXPECT_EQ(prefix.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status longer = CallTokenize(server.address(), tls, token + "x");
  EXPECT_EQ(longer.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  grpc::Status missing = CallTokenize(server.address(), tls, "");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(missing.error_message(),
            "missing authorization metadata: send 'authorization: Bearer <token>'");
  grpc::Status other_scheme = CallTokenize(server.address(), tls, "", "Basic " + token);
  EXPECT_EQ(other_scheme.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(other_scheme.error_message(), HasSubstr("missing authorization metadata"));

  // The scheme is case-insensitive.
  grpc::Status lower_case = CallTokenize(server.address(), tls, "", "bearer " + token);
  EXPECT_TRUE(lower_case.ok()) << lower_case.error_message();
}

TEST_F(SecurityTest, NoTokenMeansNoCheck) {
  TestServer server(ServerTls(), "");
  ASSERT_NE(server.server, nullptr);
  std::shared_ptr<grpc::ChannelCredentials> tls = ClientCredentials(Path("server.crt"));
  EXPECT_TRUE(CallTokenize(server.address(), tls, "").ok());
  EXPECT_TRUE(CallTokenize(server.address(), tls, "anything").ok());
}

TEST_F(SecurityTest, CredentialFileErrors) {
  const std::string cert = Path("server.crt");
  const std::string key = Path("server.key");
  const std::string absent = Path("absent.pem");

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server = MakeServerCredentials(cert, "");
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  server = MakeServerCredentials("", key);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);

  server = MakeServerCredentials(absent, key);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr(absent));
  server = MakeServerCredentials(cert, absent);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr(absent));
  server = MakeServerCredentials(cert, dir_->path());  // a directory: opens, cannot be read
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);

  // Swapped: caught before gRPC would fail to start without naming the file.
  server = MakeServerCredentials(key, cert);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(server.status().message(), HasSubstr(key));

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> client = MakeChannelCredentials(absent);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(client.status().message(), HasSubstr(absent));
  client = MakeChannelCredentials(key);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SecurityTest, ReadTokenFile) {
  const std::string path = Path("token");
  WriteFile(path, "  tok-123 \t\nsecond line\n");
  absl::StatusOr<std::string> token = ReadTokenFile(path);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "tok-123");

  WriteFile(path, "no-newline");
  token = ReadTokenFile(path);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "no-newline");

  for (const std::string empty : {"", "   \n", "\nsecond"}) {
    WriteFile(path, empty);
    token = ReadTokenFile(path);
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument) << empty;
    EXPECT_THAT(token.status().message(), HasSubstr(path));
  }

  WriteFile(path, "two words\n");
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kInvalidArgument);

  token = ReadTokenFile(Path("absent-token"));
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(token.status().message(), HasSubstr(Path("absent-token")));
}

}  // namespace
}  // namespace dsv4::rpc
