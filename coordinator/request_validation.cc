#include "coordinator/request_validation.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"

namespace dsv4::coordinator {
namespace {

absl::Status OutOfRange(absl::string_view field, absl::string_view range, absl::string_view got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be in ", range, ", got ", got));
}

absl::Status CheckModel(const std::string& model, const RequestLimits& limits) {
  if (model.empty() || model == limits.model) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("model must be \"", limits.model, "\" (or empty), got \"", model, "\""));
}

absl::Status CheckTokenIds(absl::string_view field, const google::protobuf::RepeatedField<int>& ids,
                           const RequestLimits& limits) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= limits.vocab_size) {
      return OutOfRange(absl::StrCat(field, "[", i, "]"),
                        absl::StrCat("[0, ", limits.vocab_size, ")"), absl::StrCat(ids[i]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTextOnly(absl::string_view field, absl::Span<const int> ids,
                              const RequestLimits& limits) {
  if (limits.image_token_id < 0) return absl::OkStatus();
  std::vector<std::string> at;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == limits.image_token_id && at.size() < 8) at.push_back(absl::StrCat(i));
  }
  if (at.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, " holds the image token ", limits.image_token_id, " at position(s) ",
      absl::StrJoin(at, ", "), ": this deployment serves text only (no vision tower)"));
}

RequestLimits MakeRequestLimits(const std::string& model, int vocab_size, int max_context) {
  RequestLimits limits;
  limits.model = model;
  limits.vocab_size = vocab_size;
  limits.max_context = max_context;
  limits.max_prompt_tokens = std::max(1, max_context - 1);
  limits.max_tokens = std::clamp(max_context - 1, 1, 32768);
  return limits;
}

absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits) {
  RETURN_IF_ERROR(CheckModel(request.model(), limits));
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText:
      if (request.text().empty()) {
        return absl::InvalidArgumentError("text must be a non-empty prompt");
      }
      if (request.text().size() > static_cast<size_t>(limits.max_prompt_bytes)) {
        return OutOfRange("text length in bytes",
                          absl::StrCat("[1, ", limits.max_prompt_bytes, "]"),
                          absl::StrCat(request.text().size()));
      }
      break;
    case v1::GenerateRequest::kTokenIds: {
      const int n = request.token_ids().ids_size();
      if (n < 1 || n > limits.max_prompt_tokens) {
        return OutOfRange("token_ids.ids count",
                          absl::StrCat("[1, ", limits.max_prompt_tokens, "]"), absl::StrCat(n));
      }
      RETURN_IF_ERROR(CheckTokenIds("token_ids.ids", request.token_ids().ids(), limits));
      RETURN_IF_ERROR(ValidateTextOnly("token_ids.ids", request.token_ids().ids(), limits));
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return absl::InvalidArgumentError("prompt is required: set text or token_ids");
  }
  if (request.max_tokens() < 1 || request.max_tokens() > limits.max_tokens) {
    return OutOfRange("max_tokens", absl::StrCat("[1, ", limits.max_tokens, "]"),
                      absl::StrCat(request.max_tokens()));
  }
  if (request.has_token_ids()) {
    RETURN_IF_ERROR(
        ValidatePromptLength(request.token_ids().ids_size(), request.max_tokens(), limits));
  }
  const v1::SamplingParams& sampling = request.sampling();
  // !(x >= lo) rather than x < lo so that NaN is refused too.
  if (!(sampling.temperature() >= 0 && sampling.temperature() <= 2)) {
    return OutOfRange("sampling.temperature", "[0, 2]", absl::StrCat(sampling.temperature()));
  }
  if (!(sampling.top_p() >= 0 && sampling.top_p() <= 1)) {
    return OutOfRange("sampling.top_p", "(0, 1] (0 = off)", absl::StrCat(sampling.top_p()));
  }
  if (sampling.top_k() < 0 || sampling.top_k() > limits.vocab_size) {
    return OutOfRange("sampling.top_k", absl::StrCat("[0, ", limits.vocab_size, "]"),
                      absl::StrCat(sampling.top_k()));
  }
  if (request.stop_size() > limits.max_stop_strings) {
    return OutOfRange("stop count", absl::StrCat("[0, ", limits.max_stop_strings, "]"),
                      absl::StrCat(request.stop_size()));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const size_t len = request.stop(i).size();
    if (len < 1 || len > static_cast<size_t>(limits.max_stop_string_bytes)) {
      return OutOfRange(absl::StrCat("stop[", i, "] length in bytes"),
                        absl::StrCat("[1, ", limits.max_stop_string_bytes, "]"), absl::StrCat(len));
    }
  }
  if (request.stop_token_ids_size() > limits.max_stop_token_ids) {
    return OutOfRange("stop_token_ids count", absl::StrCat("[0, ", limits.max_stop_token_ids, "]"),
                      absl::StrCat(request.stop_token_ids_size()));
  }
  RETURN_IF_ERROR(CheckTokenIds("stop_token_ids", request.stop_token_ids(), limits));
  if (request.request_id().size() > static_cast<size_t>(limits.max_request_id_bytes)) {
    return OutOfRange("request_id length in bytes",
                      absl::StrCat("[0, ", limits.max_request_id_bytes, "]"),
                      absl::StrCat(request.request_id().size()));
  }
  return absl::OkStatus();
}

absl::Status ValidatePromptLength(int prompt_tokens, int max_tokens, const RequestLimits& limits) {
  if (prompt_tokens < 1 || prompt_tokens > limits.max_prompt_tokens) {
    return OutOfRange("prompt length in tokens",
                      absl::StrCat("[1, ", limits.max_prompt_tokens, "]"),
                      absl::StrCat(prompt_tokens));
  }
  if (static_cast<int64_t>(prompt_tokens) + max_tokens > limits.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens must be in [1, ", limits.max_context - prompt_tokens, "] for a prompt of ",
        prompt_tokens, " tokens (max_context ", limits.max_context, "), got ", max_tokens));
  }
  return absl::OkStatus();
}

absl::Status ValidateTokenizeRequest(const v1::TokenizeRequest& request,
                                     const RequestLimits& limits) {
  RETURN_IF_ERROR(CheckModel(request.model(), limits));
  if (request.text().size() > static_cast<size_t>(limits.max_prompt_bytes)) {
    return OutOfRange("text length in bytes", absl::StrCat("[0, ", limits.max_prompt_bytes, "]"),
                      absl::StrCat(request.text().size()));
  }
  return absl::OkStatus();
}

}  // namespace dsv4::coordinator
