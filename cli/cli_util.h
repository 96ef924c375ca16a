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

// Parses Abseil flags for one subcommand. Abseil flag names are global to the binary, so
// each subcommand says which flags it reads: those defined in source files whose path
// contains `flag_file` (e.g. "cmd_run.cc"), and the flags defined elsewhere it names in
// `shared_flags` (the shared flags of common_flags.h it reads, e.g. {"seed", "temperature"},
// or another subcommand's, as `plan evaluate` reads plan's --model). --help (-h,
// --helpshort) prints `usage` and exactly those flags, then exits 0 (--helpfull lists
// every flag of the binary); giving a flag of another subcommand is an error, as an unknown
// flag is. Flag names may be spelled with dashes (--logits-out) or underscores. Returns the
// positional arguments (argv[0] excluded).
std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage,
                                    const std::string& flag_file,
                                    const std::vector<std::string>& shared_flags = {});

// The --help text ParseFlags prints: `usage`, then the subcommand's flags (see ParseFlags),
// sorted by name, each with its help and default.
std::string FlagsHelp(const std::string& usage, const std::string& flag_file,
                      const std::vector<std::string>& shared_flags);

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
