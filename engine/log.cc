#include "engine/log.h"

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace dsv4 {

std::shared_ptr<spdlog::logger> EngineLog() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("engine",
                                              std::make_shared<spdlog::sinks::stdout_sink_mt>());
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [engine rank ?] [%l] %v");
    l->flush_on(spdlog::level::info);
    spdlog::register_logger(l);
    return l;
  }();
  return logger;
}

void SetEngineLogRank(int rank, const std::string& role) {
  EngineLog()->set_pattern(absl::StrCat("[%Y-%m-%d %H:%M:%S.%e] [engine rank ", rank,
                                        role.empty() ? "" : " ", role, "] [%l] %v"));
}

}  // namespace dsv4
