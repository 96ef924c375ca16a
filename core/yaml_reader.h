// Strict reading of hand-written YAML configuration files (cluster and hardware YAML).
//
// Every error names the file, the 1-based line and the key path:
//   cluster-configs/local.yaml:7: topology.chips_per_node: expected a positive integer, got "four"
// Unknown and duplicate keys are errors, so a typo never passes silently. The reader keeps
// every error (the first kMaxErrors by line, then how many more) and reads that fail return
// defaults, so parsing code reads straight through and checks status() once; the user fixes
// a file in one pass instead of one error per run. Errors that only follow from another one
// are not reported: nothing after a syntax error, no missing keys inside a map that is
// missing or is not a map. Checks across keys should run only when the keys they compare
// read well (ok(), or no new error_count() since), for the same reason. Tabs in indentation get
// their own message (YAML forbids them). Nothing throws: yaml-cpp exceptions become errors.
#ifndef DSV4_CORE_YAML_READER_H_
#define DSV4_CORE_YAML_READER_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "yaml-cpp/yaml.h"

namespace dsv4 {

// What a number must satisfy; the rule's wording goes into the error message.
enum class NumberRule {
  kPositive,     // > 0
  kNonNegative,  // >= 0
  kFraction,     // in (0, 1]
};

class YamlMap;

class YamlReader {
 public:
  // Parses `text` (exactly one YAML document); `file` names it in errors.
  YamlReader(const std::string& text, std::string file);
  // Reads and parses `path`; a missing file is NotFound.
  static YamlReader FromFile(const std::string& path);

  // Errors listed in status() (the first by line); the others are counted, not listed.
  static constexpr int kMaxErrors = 20;

  const std::string& file() const { return file_; }
  // OK, or INVALID_ARGUMENT (NOT_FOUND, DATA_LOSS for an unreadable file) whose message is
  // every error found, one a line.
  const absl::Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }
  int error_count() const { return errors_; }

  // The top-level map, limited to `allowed` keys.
  YamlMap Root(std::vector<absl::string_view> allowed);

  // Records "file:line: key_path: message" at `at`, unless the document could not be read
  // at all (then every other error would be a consequence).
  void Fail(const YAML::Node& at, absl::string_view key_path, absl::string_view message);
  // "file:line" of `at` (just "file" when the node has no position).
  std::string Where(const YAML::Node& at) const;

 private:
  YamlReader(std::string file, absl::Status status);
  // Adds "file:line: ..." (`line` 1-based, 0 for the whole file) to status().
  void Record(int line, std::string error);
  // Errors for lines whose indentation holds a tab; true when there was one.
  bool FailOnTabIndentation(const std::string& text);

  std::string file_;
  YAML::Node root_;
  absl::Status status_;
  static constexpr int kMaxKeptErrors = 200;              // bounds the work on a hopeless file
  std::vector<std::pair<int, std::string>> errors_list_;  // (line, error), as found
  int errors_ = 0;
  // The document could not be read (syntax error, empty or missing file): later errors
  // would all be consequences of that one.
  bool fatal_ = false;
};

// A map node at a key path. Reads of absent keys return the default, or record
// "missing required key" at `anchor` (the line naming the map) when there is no default —
// except in a map that is itself missing (required) or not a map, whose error is already
// recorded.
class YamlMap {
 public:
  // `anchor` locates errors about absent keys; by default the map itself.
  YamlMap(YamlReader* reader, YAML::Node node, std::string path,
          std::vector<absl::string_view> allowed, std::optional<YAML::Node> anchor = std::nullopt);

  bool Has(absl::string_view key) const;
  // The value of `key`; an undefined node when absent.
  YAML::Node Get(absl::string_view key) const;
  // "parent.key", for error messages.
  std::string Path(absl::string_view key) const;
  const std::string& path() const { return path_; }
  YamlReader& reader() const { return *reader_; }

  // "file:line" of `key` (of the anchor when absent).
  std::string Where(absl::string_view key) const;
  // Records an error about `key` at its value's line (the anchor's line when absent).
  void Fail(absl::string_view key, absl::string_view message) const;

  // Integers are counts here: at most 2^31 - 1. `rule` is kPositive or kNonNegative.
  int Int(absl::string_view key, NumberRule rule,
          std::optional<int> default_value = std::nullopt) const;
  double Number(absl::string_view key, NumberRule rule,
                std::optional<double> default_value = std::nullopt) const;
  std::string String(absl::string_view key,
                     std::optional<std::string> default_value = std::nullopt) const;
  // A sequence of strings; absent = empty when `required` is false.
  std::vector<std::string> Strings(absl::string_view key, bool required = false) const;
  // A nested map limited to `allowed` keys; absent = an empty map when `required` is false.
  YamlMap Map(absl::string_view key, std::vector<absl::string_view> allowed,
              bool required = false) const;

 private:
  struct Entry {
    std::string name;
    YAML::Node key;
    YAML::Node value;
  };
  const Entry* Find(absl::string_view key) const;

  YamlReader* reader_;
  YAML::Node anchor_;    // where "missing required key" points
  bool failed_ = false;  // missing though required, or not a map: already reported
  std::string path_;
  std::vector<Entry> entries_;  // file order
};

// Scalar parsing shared by YamlMap and callers that walk sequences themselves. On failure
// they record the error at `node` under `key_path` and return nullopt.
std::optional<int> ReadYamlInt(YamlReader& reader, const YAML::Node& node,
                               absl::string_view key_path, NumberRule rule);
std::optional<double> ReadYamlNumber(YamlReader& reader, const YAML::Node& node,
                                     absl::string_view key_path, NumberRule rule);
std::optional<std::string> ReadYamlString(YamlReader& reader, const YAML::Node& node,
                                          absl::string_view key_path);

}  // namespace dsv4

#endif  // DSV4_CORE_YAML_READER_H_
