// The distributed engine: one MPI world (DESIGN.md "Processes and planes"). World ranks
// 0..A-1 attend (data parallel over sequences), ranks A..A+E-1 hold routed experts; every
// step the leader (rank 0) broadcasts the plan and all ranks run it layer by layer in lock
// step, routed tokens going by MPI all-to-all (dispatch/).
//
//   auto engine = Engine::Create(options);     // every rank loads its share of the weights
//   engine->RunOneShot(prompts, decode_from);  // tests, benchmarks: logits of given prompts
//   engine->ServeCoordinator(serve);           // a coordinator's requests, until shut down
//
// Every method is collective: all ranks of the world call it, in the same order. Rank 0
// gets the timings and the Hello, attention ranks the logits of the sequences they hold.
#ifndef DSV4_ENGINE_ENGINE_H_
#define DSV4_ENGINE_ENGINE_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/cluster_config.h"
#include "core/cost_model.h"
#include "core/model_config.h"
#include "core/weight_loader.h"
#include "dispatch/dispatcher.h"
#include "engine/placement.h"
#include "engine/step_plan.h"
#include "nlohmann/json.hpp"
#include "proto/engine.pb.h"

namespace dsv4 {

class AttentionRank;
class Checkpoint;
class ControlClient;
class ExpertRank;
class Model;
class MpiExpertExecutor;
class RoutedExperts;
class ServingLeader;
class Topology;
namespace engram {
class EngramClient;
}

struct EngineOptions {
  std::string cluster;     // cluster YAML: roles, topology, engine and Engram settings
  std::string checkpoint;  // checkpoint directory (config.json and safetensors)
  // Kernel threads per rank; 0: the YAML's engine.threads_per_rank, and if that is 0 too,
  // the cores the rank may run on divided among the ranks on its host.
  int threads = 0;
  // Test only: world rank `fail_rank` exits abnormally (_exit(3)) at the start of step
  // `fail_at_step`, as a crashed rank would.
  int fail_rank = -1;
  int64_t fail_at_step = 0;
};

// What a one-shot run produced (on rank 0, except `logits`: on the attention ranks).
struct OneShotResult {
  // Every prompt position's logits, [rows, vocab] row-major, by prompt index, for the
  // prompts this attention rank held.
  std::map<int32_t, std::vector<float>> logits;
  // Rank 0: resident weight bytes per rank, per-step measured and modelled times, overlap.
  nlohmann::json stats;
};

// Serving mode: where the coordinator is and how this engine is known to it. TLS comes from
// the cluster YAML's coordinator section, as the coordinator's does; the engine token (the
// engine credential, never a client's token) from `engine_token`, or else the YAML's
// coordinator.engine_token_file.
struct ServeOptions {
  std::string coordinator;             // host:port of its engine listener (engine_listen)
  std::string engine_id = "engine-0";  // stable across restarts of the same serving unit
  std::string engine_token;            // empty: read coordinator.engine_token_file
  std::string launch_nonce;            // set by a launching coordinator (Hello.launch_nonce)
  absl::Duration connect_timeout = absl::Seconds(60);
  // Heartbeats stop when a step runs longer, so the coordinator declares a hung engine dead;
  // unset: the cluster YAML's engine.max_step_seconds.
  std::optional<absl::Duration> max_step;
};

class Engine {
 public:
  // Loads the cluster YAML and the checkpoint on every rank of MPI_COMM_WORLD (MPI must be
  // initialised) and each rank's share of the weights: attention ranks the model (and the
  // Engram client when the YAML lists memory nodes), expert ranks the experts of their
  // slots under the uniform placement. INVALID_ARGUMENT when the world size does not match
  // the YAML's roles.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~Engine();

  // Prefills each prompt (its first `decode_from` tokens, or all when 0, in chunks of
  // engine.chunked_prefill_tokens), then decodes the rest one token per step, keeping every
  // row's logits. Prompt i lives on attention rank i mod A. INVALID_ARGUMENT when
  // `decode_from` is outside [0, a prompt's length].
  absl::StatusOr<OneShotResult> RunOneShot(const std::vector<std::vector<int32_t>>& prompts,
                                           int64_t decode_from);

  // How this engine introduces itself to a coordinator: its model, every rank's role,
  // position, host, pid and resident bytes, its limits and placement (complete on rank 0).
  engine::v1::Hello MakeHello(const std::string& engine_id);

  // Runs the requests a coordinator admits until it drains or shuts the engine down (OK)
  // or the control stream ends (that status). Rank 0 passes the connected control stream
  // (ControlClient::Connect with MakeHello's message); the other ranks pass null. Heartbeats
  // stop when a step outlasts `max_step`, so the coordinator declares a hung engine dead.
  absl::Status Serve(ControlClient* control, absl::Duration max_step);
  // MakeHello, then rank 0 dials the coordinator (waiting up to connect_timeout for it to
  // answer), then Serve.
  absl::Status ServeCoordinator(const ServeOptions& options);

  bool is_attention() const { return attention_; }
  const ModelConfig& config() const { return config_; }

 private:
  // Link bytes per LinkClass of one step, summed over the ranks.
  struct LinkBytes {
    std::array<double, kNumLinkClasses> dispatch{};
    std::array<double, kNumLinkClasses> combine{};
    double total() const;
  };
  struct StepTiming {
    double cpu_seconds = 0;  // slowest rank
    StepTime modelled;
    // Per world rank: its seconds in the step and the part of them it was blocked on the
    // data plane (attention ranks: MpiExpertExecutor Start + Finish; expert ranks:
    // FinishDispatch + FinishCombine, i.e. waiting for tokens as well as for the exchange).
    std::vector<double> rank_seconds, blocked_seconds;
    // Measured: what the dispatchers sent (raw: this runtime's fp32 records and rows, see
    // dispatch/dispatcher.h), and the same records and rows at the target's wire format
    // (FP8 dispatch copies, BF16 combine rows: DispatchBytesPerCopy, CombineBytesPerCopy).
    // Modelled: what the attention ranks' StepCosts counted (AddAllToAllCost), at the
    // target's wire format. Compare `measured_wire` with `modelled`: the ratio is then the
    // ratio of token copies, which tests the routing and geometry assumptions, not the
    // dtype (raw / wire is a fixed (8 + 8k + 4d) / (d + 4⌈d/128⌉ + 8k) for dispatch and 2
    // for combine).
    LinkBytes measured_raw, measured_wire, modelled_bytes;
    // The step priced with each rank's measured traffic (at the target's wire format) in
    // place of its modelled traffic (WithExchangeBytes).
    StepTime modelled_measured_traffic;

    double blocked_fraction(int rank) const {
      return rank_seconds[rank] > 0 ? blocked_seconds[rank] / rank_seconds[rank] : 0;
    }
  };

  Engine() = default;
  // The step log's per-rank blocked shares and measured-vs-modelled link bytes.
  std::string BlockedSummary(const StepTiming& timing) const;
  std::string LinkSummary(const StepTiming& timing) const;
  absl::Status Setup(const EngineOptions& options);
  absl::Status LoadExperts();
  // The attention side for a run: keeps every logit row (one-shot) or only samples.
  void StartAttention(bool keep_logits);
  // Runs the broadcast `plan`, appends tokens sampled here to `sampled`; rank 0 gets the
  // step's timing.
  absl::StatusOr<StepTiming> RunStep(const StepPlan& plan, std::vector<SampledToken>* sampled);
  // At a step boundary: the placement from the leader's pending load; expert ranks load
  // the experts of their new slots.
  absl::Status ApplyRebalance(int64_t step, ServingLeader* leader);
  // After a step with `report_load`: expert load and Engram stall summed on rank 0.
  void ReduceLoad(std::vector<int64_t>* load, double* engram_stall_ms);

  EngineOptions options_;
  int rank_ = 0, size_ = 0;
  bool attention_ = false;
  ClusterConfig cluster_;
  std::unique_ptr<Topology> topology_;
  ModelConfig config_;
  std::unique_ptr<Checkpoint> checkpoint_;
  PlacementOptions placement_options_;
  std::unique_ptr<ExpertPlacement> placement_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<engram::EngramClient> engram_;   // attention ranks, tables on memory nodes
  std::unique_ptr<Model> model_;                   // attention ranks
  std::unique_ptr<MpiExpertExecutor> executor_;    // attention ranks
  std::unique_ptr<AttentionRank> attention_rank_;  // attention ranks
  std::unique_ptr<RoutedExperts> experts_;         // expert ranks
  std::unique_ptr<ExpertRank> expert_rank_;        // expert ranks
  std::vector<WeightBytes> weights_;               // rank 0: per rank
  double step_seconds_ = 0;                        // this rank's time in steps
  // This rank's data-plane counters at the end of the last step (for per-step deltas).
  double last_wait_seconds_ = 0;
  ExchangeTraffic last_traffic_;
};

// Writes a one-shot run's outputs like `dsv4 run`: each prompt's logits as float32
// [T, vocab] .npy to `logits_out` for one prompt and, for several, to FILE.<i>.npy for
// prompt i (FILE being `logits_out` without its .npy suffix); the stats as JSON to
// `stats_out` (rank 0). Empty paths write nothing.
absl::Status WriteOneShotResult(const OneShotResult& result, int64_t vocab, size_t prompts,
                                const std::string& logits_out, const std::string& stats_out);

}  // namespace dsv4

#endif  // DSV4_ENGINE_ENGINE_H_
