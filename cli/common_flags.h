// Flags shared by several subcommands. Abseil flag names are global to the binary, so a
// flag that two commands take is defined once, here, and listed in each command's --help
// (each says which commands read it).
#ifndef DSV4_CLI_COMMON_FLAGS_H_
#define DSV4_CLI_COMMON_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, token_file);

#endif  // DSV4_CLI_COMMON_FLAGS_H_
