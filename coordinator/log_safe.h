// Strings from the network (engine ids, admin reasons) made safe for one log line.
#ifndef DSV4_COORDINATOR_LOG_SAFE_H_
#define DSV4_COORDINATOR_LOG_SAFE_H_

#include <string>

namespace dsv4::coordinator {

// `text` with control characters, backslashes and non-ASCII bytes C-escaped, cut to 256
// bytes.
std::string LogSafe(const std::string& text);

}  // namespace dsv4::coordinator

#endif  // DSV4_COORDINATOR_LOG_SAFE_H_
