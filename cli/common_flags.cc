#include "cli/common_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(uint64_t, seed, 0,
          "checkpoint generate, run, generate: random seed; the same seed gives the same "
          "checkpoint bytes / the same samples");
ABSL_FLAG(std::string, server, "127.0.0.1:50051",
          "generate, status: coordinator address (host:port)");
ABSL_FLAG(double, temperature, 1.0, "run, generate: sampling temperature (0: greedy)");
ABSL_FLAG(double, top_p, 1.0,
          "run, generate: nucleus sampling, keep the top tokens holding this mass");
ABSL_FLAG(int32_t, top_k, 0, "run, generate: keep the k most likely tokens (0: all)");
ABSL_FLAG(std::string, tls_ca, "",
          "generate, status: PEM certificate to trust for a coordinator serving TLS "
          "(coordinator.tls.cert); empty: plaintext");
ABSL_FLAG(std::string, token_file, "",
          "generate, status: file holding your API key's token (a token of the coordinator's "
          "coordinator.api_keys_file); admin: the admin token (coordinator.admin_token_file)");
