// DSV4_CHECK(cond, parts...): aborts with file, line, the condition and the reason when
// `cond` is false. For misuse of an internal API (bad sizes, out-of-range indices, shape
// mismatches): a bug in the caller, not a runtime condition, so not worth a Status. Input
// from files, flags and the network is validated with Status instead.
#ifndef DSV4_CORE_CHECK_H_
#define DSV4_CORE_CHECK_H_

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

#define DSV4_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: check failed: %s: %s\n", __FILE__, __LINE__, #cond, \
                   absl::StrCat(__VA_ARGS__).c_str());                                 \
      std::abort();                                                                    \
    }                                                                                  \
  } while (false)

#endif  // DSV4_CORE_CHECK_H_
