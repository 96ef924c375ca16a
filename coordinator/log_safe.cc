#include "coordinator/log_safe.h"

#include "absl/strings/str_format.h"

namespace dsv4::coordinator {

std::string LogSafe(const std::string& text) {
  constexpr size_t kMax = 256;
  std::string escaped;
  for (const char ch : text.substr(0, kMax)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\\') {
      escaped += "\\\\";
    } else if (c == '\n') {
      escaped += "\\n";
    } else if (c == '\r') {
      escaped += "\\r";
    } else if (c == '\t') {
      escaped += "\\t";
    } else if (c < 0x20 || c >= 0x7f) {
      escaped += absl::StrFormat("\\x%02x", c);
    } else {
      escaped += ch;
    }
  }
  if (text.size() > kMax) escaped += "...";
  return escaped;
}

}  // namespace dsv4::coordinator
