// Validation of public GenerateRequest / TokenizeRequest fields before anything is queued.
// Every error is INVALID_ARGUMENT and names the field and its allowed range, e.g.
//   max_tokens must be in [1, 32768], got 0
// so a client can fix the request without reading server logs.
#ifndef DSV4_COORDINATOR_REQUEST_VALIDATION_H_
#define DSV4_COORDINATOR_REQUEST_VALIDATION_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "proto/inference.pb.h"

namespace dsv4::coordinator {

// The served model's limits. Defaults are the public API's hard caps.
struct RequestLimits {
  std::string model;             // served model name; requests may leave `model` empty
  int vocab_size = 0;            // token ids must be in [0, vocab_size)
  int image_token_id = -1;       // V4.1's image token: refused (text only); -1 = none
  int max_context = 4096;        // prompt tokens + max_tokens must fit
  int max_tokens = 32768;        // upper bound of max_tokens
  int max_prompt_tokens = 4095;  // prompt length in tokens
  int max_prompt_bytes = 1 << 20;
  int max_stop_strings = 16;
  int max_stop_string_bytes = 256;
  int max_stop_token_ids = 64;
  int max_request_id_bytes = 128;
};

// Derives limits from the served model and context: max_prompt_tokens = max_context − 1
// (at least one token must be generated), max_tokens = min(32768, max_context − 1).
RequestLimits MakeRequestLimits(const std::string& model, int vocab_size, int max_context);

// Checks every field of `request` that can be checked without tokenizing: model, prompt
// (text size, or token ids' count and range), max_tokens, sampling, stop strings, stop
// token ids and request_id.
absl::Status ValidateGenerateRequest(const v1::GenerateRequest& request,
                                     const RequestLimits& limits);

// Checks the tokenized prompt length against the limits: called after a text prompt is
// encoded (a token-id prompt is fully checked by ValidateGenerateRequest).
absl::Status ValidatePromptLength(int prompt_tokens, int max_tokens, const RequestLimits& limits);
// INVALID_ARGUMENT naming the positions of image tokens in `ids` (field "text" or
// "token_ids.ids"): this runtime serves V4.1 text only.
absl::Status ValidateTextOnly(absl::string_view field, absl::Span<const int> ids,
                              const RequestLimits& limits);

absl::Status ValidateTokenizeRequest(const v1::TokenizeRequest& request,
                                     const RequestLimits& limits);

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_REQUEST_VALIDATION_H_
