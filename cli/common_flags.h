// Flags shared by several subcommands. Abseil flag names are global to the binary, so a
// flag that two commands take is defined once, here, and listed in each command's --help.
#ifndef DSV4_CLI_COMMON_FLAGS_H_
#define DSV4_CLI_COMMON_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, server);

#endif  // DSV4_CLI_COMMON_FLAGS_H_
