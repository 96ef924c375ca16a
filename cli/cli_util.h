// Shared plumbing for the dsv4 subcommands: per-subcommand flag parsing and help, and
// turning a Status into an exit code with a message on stderr.
#ifndef DSV4_CLI_CLI_UTIL_H_
#define DSV4_CLI_CLI_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv4::cli {

// Parses Abseil flags for one subcommand. `usage` is printed by --help together with the
// flags defined in source files whose path contains `flag_file` (e.g. "cmd_run.cc") and
// the shared ones (common_flags.h), so each subcommand's --help lists only its own flags.
// Flag names may be spelled with dashes (--logits-out) or underscores. Returns the positional
// arguments (argv[0] excluded).
std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage,
                                    const std::string& flag_file);

// Prints "dsv4 <command>: <message>" for a non-OK status and returns the exit code
// (0 for OK, 2 for INVALID_ARGUMENT / NOT_FOUND, 1 otherwise).
int ExitCode(const absl::Status& status, const std::string& command);

// Token ids given on the command line by `flag`: "1,2,3", or several sequences separated
// by ';' ("1,2,3;4,5"). INVALID_ARGUMENT naming the flag for a part that is not an integer,
// an empty sequence or no sequence at all.
absl::StatusOr<std::vector<std::vector<int32_t>>> ParseTokenSequences(const std::string& text,
                                                                      const std::string& flag);

// Finds a file shipped with the project (e.g. "models/v4-mini/config.json"): in the
// current directory, under $DSV4_HOME, or relative to the dsv4 executable (build/bin/).
absl::StatusOr<std::string> FindProjectFile(const std::string& relative);

}  // namespace dsv4::cli

#endif  // DSV4_CLI_CLI_UTIL_H_
