// Numbers for people: sizes and counts in a report, scaled to a readable unit.
#ifndef DSV4_CORE_UNITS_H_
#define DSV4_CORE_UNITS_H_

#include <cstdint>
#include <string>

namespace dsv4 {

std::string FormatBytes(double bytes);  // "12.3 MB", "4.56 GB" (decimal units, scaled)
std::string FormatCount(int64_t n);     // "1.60B", "312.4M", "622.5K", "1024"

}  // namespace dsv4

#endif  // DSV4_CORE_UNITS_H_
