// `dsv4 <command> --help` lists exactly the flags the command reads: its own and the shared
// ones (cli/common_flags.h) or another command's it declares, and the usage line names
// each of them; a flag of another command is refused.
#include <set>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace dsv4 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The "  --name" lines of a --help text.
std::set<std::string> ListedFlags(const std::string& help) {
  std::set<std::string> flags;
  std::istringstream in(help);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("  --", 0) == 0) flags.insert(line.substr(4));
  }
  return flags;
}

testing::CommandResult Help(const std::string& command) {
  testing::CommandResult r = testing::RunCommand(testing::Dsv4() + " " + command + " --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return r;
}

TEST(CliHelpTest, PlanListsExactlyItsFlagsAndItsUsageNamesThemAll) {
  const std::string help = Help("plan").output;
  const std::set<std::string> expected = {"chip_cost_per_hour",
                                          "cluster",
                                          "emit_cluster_config",
                                          "help",
                                          "json",
                                          "layouts",
                                          "memory_node_cost_per_hour",
                                          "memory_reserve",
                                          "model",
                                          "objective",
                                          "slo_tpot_ms",
                                          "slo_ttft_ms",
                                          "svg",
                                          "top",
                                          "workload"};
  EXPECT_EQ(ListedFlags(help), expected);
  const std::string usage = help.substr(0, help.find("\nFlags"));
  for (const std::string& flag : expected) {
    if (flag == "help") continue;
    EXPECT_THAT(usage, HasSubstr("--" + flag)) << flag;
  }
  EXPECT_THAT(usage, HasSubstr("colocated|afd|both"));
}

TEST(CliHelpTest, PlanEvaluateListsItsFlagsAndPlansInputs) {
  const std::string help = Help("plan evaluate").output;
  const std::set<std::string> expected = {"attention_ranks",
                                          "batch",
                                          "cluster",
                                          "expert_ranks",
                                          "help",
                                          "hierarchical",
                                          "json",
                                          "layout",
                                          "memory_reserve",
                                          "micro_batches",
                                          "model",
                                          "phase",
                                          "ranks_per_chip",
                                          "redundant_experts",
                                          "shared_expert_ranks",
                                          "slo_tpot_ms",
                                          "slo_ttft_ms",
                                          "unit",
                                          "workload"};
  EXPECT_EQ(ListedFlags(help), expected);
  const std::string usage = help.substr(0, help.find("\nFlags"));
  for (const std::string& flag : expected) {
    if (flag == "help") continue;
    EXPECT_THAT(usage, HasSubstr("--" + flag)) << flag;
  }
}

// The shared flags show up only where they are read.
TEST(CliHelpTest, SharedFlagsOnlyWhereRead) {
  const std::set<std::string> generate = ListedFlags(Help("generate").output);
  for (const char* flag :
       {"server", "seed", "temperature", "top_p", "top_k", "tls_ca", "token_file"}) {
    EXPECT_TRUE(generate.count(flag)) << flag;
  }
  const std::set<std::string> run = ListedFlags(Help("run").output);
  EXPECT_TRUE(run.count("temperature"));
  EXPECT_FALSE(run.count("server"));
  EXPECT_FALSE(run.count("token_file"));
  const std::set<std::string> status = ListedFlags(Help("status").output);
  EXPECT_TRUE(status.count("server"));
  EXPECT_FALSE(status.count("seed"));
  EXPECT_TRUE(ListedFlags(Help("checkpoint generate").output).count("seed"));
  EXPECT_FALSE(ListedFlags(Help("checkpoint inspect").output).count("seed"));
  EXPECT_EQ(ListedFlags(Help("admin").output).count("token_file"), 1u);
}

TEST(CliHelpTest, AnotherCommandsFlagIsRefused) {
  auto r = testing::RunCommand(testing::Dsv4() + " plan --seed 3 --model deepseek-v4-pro");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--seed is not a flag of this command"));
  r = testing::RunCommand(testing::Dsv4() + " plan evaluate --objective cost");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--objective is not a flag of this command"));
  r = testing::RunCommand(testing::Dsv4() + " plan --unit 'A1+E1 r0 b1 m1 flat'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--unit is not a flag of this command"));
  // A value that looks like a flag is a value.
  r = testing::RunCommand(testing::Dsv4() + " plan --model --seed");
  EXPECT_THAT(r.output, Not(HasSubstr("is not a flag of this command")));
}

}  // namespace
}  // namespace dsv4
