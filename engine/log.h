// The engine's logger: one spdlog logger ("engine") per process, to stdout, with this
// rank's index and role in every line, e.g.
//   [2026-12-04 17:30:01.123] [engine rank 1 expert] [info] rebalanced before step 40 ...
// Progress lines are flushed as they are written, so they show through a pipe.
#ifndef DSV4_ENGINE_LOG_H_
#define DSV4_ENGINE_LOG_H_

#include <memory>
#include <string>

#include "spdlog/logger.h"

namespace dsv4 {

// Names this process's rank and role ("attention", "expert"; empty while unknown) in the
// lines that follow; until called, lines say "rank ?".
void SetEngineLogRank(int rank, const std::string& role = "");
// The logger, registered with spdlog on first use.
std::shared_ptr<spdlog::logger> EngineLog();

}  // namespace dsv4

#endif  // DSV4_ENGINE_LOG_H_
