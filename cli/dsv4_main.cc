// dsv4: the command-line client and tools of dsv4-cluster.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

struct Command {
  const char* name;  // one or two words
  const char* summary;
  int (*main)(int argc, char** argv);
};

const Command kCommands[] = {
    {"checkpoint generate", "write a synthetic, seeded checkpoint in the official layout",
     dsv4::cli::CheckpointGenerateMain},
    {"checkpoint inspect", "summarise and verify a checkpoint directory",
     dsv4::cli::CheckpointInspectMain},
    {"run", "run the forward pass in this process: logits, sampling, throughput, memory",
     dsv4::cli::RunMain},
    // Before "plan": the first command whose words match runs.
    {"plan evaluate", "price one given serving layout as the planner's search does",
     dsv4::cli::PlanEvaluateMain},
    {"plan", "search serving layouts for a model, cluster and workload", dsv4::cli::PlanMain},
    {"generate", "stream a generation from a coordinator", dsv4::cli::GenerateMain},
    {"status", "print a coordinator's cluster status", dsv4::cli::StatusMain},
    {"admin", "rebalance, drain or shut down an engine (the coordinator's admin API)",
     dsv4::cli::AdminMain},
};

void PrintUsage(std::ostream& out) {
  out << "usage: dsv4 <command> [flags] [args]\n\n"
         "dsv4-cluster: serve DeepSeek-V4-class MoE models across a cluster.\n\n"
         "commands:\n";
  for (const Command& c : kCommands) {
    std::string name = c.name;
    name.resize(22, ' ');
    out << "  " << name << c.summary << "\n";
  }
  out << "\nRun 'dsv4 <command> --help' for a command's flags.\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    PrintUsage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    const std::string name = c.name;
    const size_t space = name.find(' ');
    int consumed = 1;
    if (space == std::string::npos) {
      if (name != argv[1]) continue;
    } else {
      if (argc < 3 || name.substr(0, space) != argv[1] || name.substr(space + 1) != argv[2])
        continue;
      consumed = 2;
    }
    std::string program = "dsv4 " + name;
    std::vector<char*> args = {program.data()};
    for (int i = 1 + consumed; i < argc; ++i) args.push_back(argv[i]);
    return c.main(static_cast<int>(args.size()), args.data());
  }
  std::cerr << "dsv4: unknown command '" << argv[1] << (argc > 2 ? std::string(" ") + argv[2] : "")
            << "'\n\n";
  PrintUsage(std::cerr);
  return 2;
}
