#include "cli/common_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(uint64_t, seed, 0,
          "random seed: the same seed gives the same checkpoint bytes / the same samples");
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "coordinator address (host:port)");
