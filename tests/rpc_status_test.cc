// absl::Status ↔ grpc::Status at the gRPC edge (rpc/status.h): codes and messages survive the
// round trip both ways, OK stays OK, and FromGrpc's context and code name prefixes read as
// the CLI and the engine's control client print them.
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "rpc/status.h"

namespace dsv4::rpc {
namespace {

TEST(RpcStatusTest, EveryCodeAndMessageSurvivesTheRoundTrip) {
  for (int c = 1; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    const absl::Status status(code, "max_tokens must be in [1, 32768], got 0");
    const grpc::Status wire = ToGrpc(status);
    EXPECT_EQ(static_cast<int>(wire.error_code()), c);
    EXPECT_EQ(wire.error_message(), "max_tokens must be in [1, 32768], got 0");
    EXPECT_EQ(FromGrpc(wire), status) << absl::StatusCodeToString(code);

    const grpc::Status from_wire(static_cast<grpc::StatusCode>(c), "engine-0 failed");
    const grpc::Status back = ToGrpc(FromGrpc(from_wire));
    EXPECT_EQ(back.error_code(), from_wire.error_code());
    EXPECT_EQ(back.error_message(), from_wire.error_message());
  }
}

TEST(RpcStatusTest, OkStaysOk) {
  EXPECT_TRUE(ToGrpc(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpc(absl::OkStatus()).error_message(), "");
  EXPECT_EQ(FromGrpc(grpc::Status::OK), absl::OkStatus());
  EXPECT_EQ(FromGrpc(grpc::Status::OK, "control stream", CodeName::kInclude), absl::OkStatus());
}

TEST(RpcStatusTest, ContextAndCodeNamePrefixTheMessage) {
  const grpc::Status refused(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  EXPECT_EQ(FromGrpc(refused, "control stream"),
            absl::UnauthenticatedError("control stream: invalid bearer token"));
  EXPECT_EQ(FromGrpc(refused, {}, CodeName::kInclude),
            absl::UnauthenticatedError("UNAUTHENTICATED: invalid bearer token"));
  EXPECT_EQ(FromGrpc(refused, "127.0.0.1:50052", CodeName::kInclude),
            absl::UnauthenticatedError("UNAUTHENTICATED: 127.0.0.1:50052: invalid bearer token"));
  // Sent on again (e.g. a server relaying an upstream error), the prefixed message goes as is.
  const grpc::Status back = ToGrpc(FromGrpc(refused, "control stream"));
  EXPECT_EQ(back.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(back.error_message(), "control stream: invalid bearer token");
  // An empty message keeps only the prefixes.
  EXPECT_EQ(FromGrpc(grpc::Status(grpc::StatusCode::CANCELLED, ""), "generate").message(),
            "generate: ");
}

}  // namespace
}  // namespace dsv4::rpc
