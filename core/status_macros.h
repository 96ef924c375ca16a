// Passing a status along, as Abseil's internal macros and Google's code do:
//
//   RETURN_IF_ERROR(file.Flush());               // returns the status if it is not OK
//   ASSIGN_OR_RETURN(Config config, Load(path)); // declares `config`, or returns the error
//   ASSIGN_OR_RETURN(member_, Load(path));       // assigns an existing lvalue
//
// Both work in functions returning absl::Status or any absl::StatusOr<T>. The StatusOr
// expression is evaluated once and its value moved into the target.
#ifndef DSV4_CORE_STATUS_MACROS_H_
#define DSV4_CORE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RETURN_IF_ERROR(expr)                                     \
  do {                                                            \
    if (absl::Status dsv4_status_ = (expr); !dsv4_status_.ok()) { \
      return dsv4_status_;                                        \
    }                                                             \
  } while (false)

#define DSV4_STATUS_CONCAT_INNER_(a, b) a##b
#define DSV4_STATUS_CONCAT_(a, b) DSV4_STATUS_CONCAT_INNER_(a, b)

// `lhs` may not contain a top-level comma (declare std::pair<int, int> before, then assign).
#define ASSIGN_OR_RETURN(lhs, expr) \
  DSV4_ASSIGN_OR_RETURN_IMPL_(DSV4_STATUS_CONCAT_(dsv4_statusor_, __LINE__), lhs, expr)

#define DSV4_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)   \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // DSV4_CORE_STATUS_MACROS_H_
