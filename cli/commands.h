// The dsv4 subcommands. Each lives in its own cli/cmd_*.cc and receives argv with
// argv[0] set to "dsv4 <command>".
#ifndef DSV4_CLI_COMMANDS_H_
#define DSV4_CLI_COMMANDS_H_

namespace dsv4::cli {

int CheckpointGenerateMain(int argc, char** argv);
int CheckpointInspectMain(int argc, char** argv);
int RunMain(int argc, char** argv);
int PlanMain(int argc, char** argv);
int PlanEvaluateMain(int argc, char** argv);
int StatusMain(int argc, char** argv);
int GenerateMain(int argc, char** argv);
int AdminMain(int argc, char** argv);

}  // namespace dsv4::cli

#endif  // DSV4_CLI_COMMANDS_H_
