#include "rpc/status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace dsv4::rpc {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpc(const grpc::Status& status, absl::string_view context, CodeName code_name) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  std::string message;
  if (code_name == CodeName::kInclude)
    absl::StrAppend(&message, absl::StatusCodeToString(code), ": ");
  if (!context.empty()) absl::StrAppend(&message, context, ": ");
  absl::StrAppend(&message, status.error_message());
  return absl::Status(code, message);
}

}  // namespace dsv4::rpc
