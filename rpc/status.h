// Status conversion at the gRPC edge: absl::Status inside, grpc::Status on the wire. The two
// code sets are the same (0..16), so codes map one to one in both directions.
#ifndef DSV4_RPC_STATUS_H_
#define DSV4_RPC_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/status.h"

namespace dsv4::rpc {

// absl::Status → grpc::Status with the same code and message (OK → grpc::Status::OK).
grpc::Status ToGrpc(const absl::Status& status);

// Whether FromGrpc starts the message with the code's name, for callers that show a user
// only the message (the dsv4 CLI): "UNAVAILABLE: <context>: <message>".
enum class CodeName { kOmit, kInclude };

// grpc::Status → absl::Status with the same code. The message is the call's, after
// "<context>: " when `context` is not empty (e.g. the address or the call that failed) and
// after "<CODE NAME>: " before that with CodeName::kInclude. OK → absl::OkStatus(), whatever
// the context.
absl::Status FromGrpc(const grpc::Status& status, absl::string_view context = {},
                      CodeName code_name = CodeName::kOmit);

}  // namespace dsv4::rpc

#endif  // DSV4_RPC_STATUS_H_
