#include "engine/attention_rank.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "core/status_macros.h"

namespace dsv4 {
namespace {

struct MicroBatch {
  std::vector<const PlanEntry*> entries;
  std::vector<StepInput> inputs;
  std::vector<SequenceChunk> chunks;
  std::optional<Step> step;  // absent when the micro-batch has no sequences this step
  RoutedTokens routed;
  Tensor out;
  DispatchHandle handle;
  int64_t tokens = 0;
};

}  // namespace

AttentionRank::AttentionRank(const Model* model, MpiExpertExecutor* executor, int rank,
                             int micro_batches, const ExpertGeometry& geometry, bool keep_logits)
    : model_(model),
      executor_(executor),
      rank_(rank),
      micro_batches_(micro_batches),
      geometry_(geometry),
      keep_logits_(keep_logits),
      expert_load_(
          static_cast<size_t>(model->config().num_hidden_layers) * model->config().n_routed_experts,
          0) {}

std::vector<int64_t> AttentionRank::TakeExpertLoad() {
  std::vector<int64_t> load(expert_load_.size(), 0);
  load.swap(expert_load_);
  return load;
}

absl::Status AttentionRank::RunStep(const StepPlan& plan, StepCost* cost,
                                    std::vector<SampledToken>* sampled) {
  const ModelConfig& config = model_->config();
  for (int32_t sequence : plan.release) states_.erase(sequence);
  std::vector<MicroBatch> mbs(micro_batches_);
  for (const PlanEntry& e : plan.entries) {
    if (e.rank != rank_) continue;
    if (e.micro_batch < 0 || e.micro_batch >= micro_batches_) {
      return absl::InvalidArgumentError("step plan: micro-batch out of range");
    }
    auto it = states_.try_emplace(e.sequence, model_->NewSequence()).first;
    MicroBatch& mb = mbs[e.micro_batch];
    mb.entries.push_back(&e);
    mb.inputs.push_back({&it->second, e.tokens});
    const int64_t n = static_cast<int64_t>(e.tokens.size());
    mb.chunks.push_back({1, it->second.position(), n, n});
    mb.tokens += n;
  }
  for (MicroBatch& mb : mbs) {
    if (!mb.inputs.empty()) {
      ASSIGN_OR_RETURN(mb.step, model_->BeginStep(mb.inputs));
    }
  }
  // Modelled work, in the planner's terms: per micro-batch its layers, edges and exchanges.
  for (const MicroBatch& mb : mbs) {
    if (!mb.chunks.empty()) {
      for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
        *cost += AttentionLayerCost(config, layer, mb.chunks, CostOptions{});
      }
      *cost += EdgeCost(config, mb.chunks);
    }
    for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
      AddAllToAllCost(config, static_cast<double>(mb.tokens), geometry_, cost);
    }
  }

  const int k = config.num_experts_per_tok;
  std::vector<ExchangeProtocol> protocol(micro_batches_);
  for (int i = 0; i < micro_batches_; ++i) {
    protocol[i] = executor_->dispatcher().ProtocolFor(MaxTokensPerRank(plan, i));
  }
  auto stage = [&](int index, int layer) -> absl::Status {
    MicroBatch& mb = mbs[index];
    if (mb.step) {
      RETURN_IF_ERROR(model_->AttentionStage(layer, &*mb.step, &mb.routed));
      int64_t* load = expert_load_.data() + static_cast<size_t>(layer) * config.n_routed_experts;
      for (int32_t e : mb.routed.expert_ids) load[e] += 1;
    } else {
      mb.routed = RoutedTokens{Tensor(), {}, {}, k};
    }
    ASSIGN_OR_RETURN(mb.handle, executor_->Start(index, protocol[index], layer, mb.routed.x,
                                                 mb.routed.expert_ids, mb.routed.weights, k));
    return absl::OkStatus();
  };
  for (int i = 0; i < micro_batches_; ++i) {
    RETURN_IF_ERROR(stage(i, 0));
  }
  for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (int i = 0; i < micro_batches_; ++i) {
      MicroBatch& mb = mbs[i];
      RETURN_IF_ERROR(executor_->Finish(mb.handle, &mb.out));
      if (mb.step) {
        RETURN_IF_ERROR(model_->MoeFinish(layer, &*mb.step, mb.out));
      }
      if (layer + 1 < config.num_hidden_layers) {
        RETURN_IF_ERROR(stage(i, layer + 1));
      }
    }
  }
  for (MicroBatch& mb : mbs) {
    if (!mb.step) continue;
    const bool samples = std::any_of(mb.entries.begin(), mb.entries.end(),
                                     [](const PlanEntry* e) { return e->sample; });
    if (keep_logits_ || samples) {
      ASSIGN_OR_RETURN(
          const Tensor logits,
          model_->Logits(*mb.step, keep_logits_ ? LogitRows::kAll : LogitRows::kLastPerSequence));
      const int64_t vocab = logits.dim(1);
      for (int i = 0; i < mb.step->num_sequences(); ++i) {
        const PlanEntry& e = *mb.entries[i];
        // Rows of sequence i: all of them, or its last one only.
        const int64_t begin = keep_logits_ ? mb.step->row_begin(i) : i;
        const int64_t rows = keep_logits_ ? mb.step->sequence_rows(i) : 1;
        const float* data = logits.data() + begin * vocab;
        if (keep_logits_) {
          logits_[e.sequence].insert(logits_[e.sequence].end(), data, data + rows * vocab);
        }
        if (e.sample) {
          const float* last = data + (rows - 1) * vocab;
          sampled->push_back({e.sequence, Sampler::SampleDraw(absl::MakeConstSpan(last, vocab),
                                                              e.sampling, e.draw)});
        }
      }
    }
    RETURN_IF_ERROR(model_->Finish(&*mb.step));
  }
  return absl::OkStatus();
}

}  // namespace dsv4
