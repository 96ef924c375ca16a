// One admitted generation request as the coordinator keeps it from admission to its final
// message: what it asks for (GenerationSpec), everything the engines produced for it
// (tokens, the text they complete, the finish) and the timings. The scheduler writes it;
// Generate handlers (one, or several for a retried request_id) read it and stream what they
// have not sent yet. Replays after an engine loss take `tokens()` as their resume_tokens, so
// a record never loses or repeats a token. Thread-safe.
#ifndef DSV4_COORDINATOR_REQUEST_H_
#define DSV4_COORDINATOR_REQUEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/metrics.h"
#include "core/tokenizer.h"
#include "proto/inference.pb.h"

namespace dsv4::coordinator {

// What a generation asks for, as the coordinator keeps it: a validated public request with
// its prompt tokenized. Engines get it as an Admit message (built where the scheduler sends
// it); only the stop strings stay with the coordinator.
struct GenerationSpec {
  std::vector<int32_t> prompt_token_ids;
  // As the public API gives them: temperature 0 = greedy, top_p 0 = off, top_k 0 = off.
  struct Sampling {
    float temperature = 0.0f;
    float top_p = 0.0f;
    int32_t top_k = 0;
    uint64_t seed = 0;
  };
  Sampling sampling;
  int32_t max_tokens = 0;
  std::vector<int32_t> stop_token_ids;  // end the request when sampled (engine side)
  bool ignore_eos = false;              // EOS does not end the request
  std::vector<std::string> stop;        // stop strings, matched on the decoded text
};

class Request {
 public:
  // `id` is the coordinator-assigned id engines know the request by; `caller` the name of
  // the API key that submitted it (metrics), empty when unknown.
  Request(std::string id, GenerationSpec spec, const Tokenizer& tokenizer, std::string caller = "");

  const std::string& id() const { return id_; }
  const std::string& caller() const { return caller_; }
  const GenerationSpec& spec() const { return spec_; }
  int prompt_tokens() const { return static_cast<int>(spec_.prompt_token_ids.size()); }

  // What a reader has not seen yet, past `tokens_seen` tokens and `text_seen` text bytes.
  struct Update {
    std::vector<int32_t> tokens;
    std::string text;
    bool finished = false;
    v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
    absl::Status error;  // set when the request failed (the stream ends with it)
    absl::Time arrived;  // when the newest of `tokens` came from the engine
  };
  // Waits until there is something past (`tokens_seen`, `text_seen`) or the request is
  // finished, for at most `timeout`.
  Update WaitForUpdate(size_t tokens_seen, size_t text_seen, absl::Duration timeout) const;

  // Appends an engine's tokens; returns true when a stop string ended the request (its text
  // stops before the stop string; the engine must be told to cancel).
  bool AddTokens(const std::vector<int32_t>& tokens, absl::Time now);
  // Ends it; later calls are ignored. `error` non-OK ends the client's stream with it.
  void Finish(v1::FinishReason reason, absl::Status error, absl::Time now);
  bool finished() const;
  std::vector<int32_t> tokens() const;

  // Filled in the final GenerateResponse.
  void FillUsageAndTimings(v1::GenerateResponse* response) const;
  // Reports the finished request's latencies and token counts.
  void RecordMetrics(Metrics& metrics) const;
  absl::Time admitted() const { return admitted_; }

 private:
  const std::string id_;
  const std::string caller_;
  const GenerationSpec spec_;
  const absl::Time admitted_;

  mutable absl::Mutex mu_;
  StreamingDecoder decoder_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> tokens_ ABSL_GUARDED_BY(mu_);
  std::string text_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  v1::FinishReason finish_reason_ ABSL_GUARDED_BY(mu_) = v1::FINISH_REASON_UNSPECIFIED;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  absl::Time first_token_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time done_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time last_tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_REQUEST_H_
