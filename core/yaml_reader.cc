#include "core/yaml_reader.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "yaml-cpp/eventhandler.h"

namespace dsv4 {
namespace {

// How a node reads in "got ..." messages.
std::string Describe(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing";
  if (node.IsSequence()) return "a sequence";
  if (node.IsMap()) return "a map";
  return absl::StrCat("\"", node.Scalar(), "\"");
}

absl::string_view RuleText(NumberRule rule, bool integer) {
  switch (rule) {
    case NumberRule::kPositive:
      return integer ? "a positive integer" : "a positive number";
    case NumberRule::kNonNegative:
      return integer ? "a non-negative integer" : "a non-negative number";
    case NumberRule::kFraction:
      return "a number in (0, 1]";
  }
  return "a number";
}

bool Satisfies(double value, NumberRule rule) {
  switch (rule) {
    case NumberRule::kPositive:
      return value > 0;
    case NumberRule::kNonNegative:
      return value >= 0;
    case NumberRule::kFraction:
      return value > 0 && value <= 1;
  }
  return false;
}

std::string JoinPath(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

// Counts documents and remembers where the last one started; builds nothing.
struct DocumentCounter : YAML::EventHandler {
  int documents = 0;
  YAML::Mark last;
  void OnDocumentStart(const YAML::Mark& mark) override {
    ++documents;
    last = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

}  // namespace

YamlReader::YamlReader(std::string file, absl::Status status)
    : file_(std::move(file)), status_(std::move(status)), errors_(1), fatal_(true) {}

YamlReader::YamlReader(const std::string& text, std::string file) : file_(std::move(file)) {
  if (FailOnTabIndentation(text)) {
    fatal_ = true;
    return;
  }
  try {
    // yaml-cpp 0.7's LoadAll never returns when a document starts with a stray ',' ("#\n,"):
    // its parser reports an empty document without consuming the comma, and LoadAll collects
    // them until memory runs out (found by core/fuzz/cluster_config_fuzz). Count the
    // documents first, boundedly, and build them only when the count is finite.
    constexpr int kMaxDocuments = 64;
    DocumentCounter counter;
    std::istringstream in(text);
    YAML::Parser parser(in);
    while (counter.documents < kMaxDocuments && parser.HandleNextDocument(counter)) {
    }
    if (counter.documents >= kMaxDocuments) {
      Record(counter.last.line + 1,
             absl::StrCat(file_, ":", counter.last.line + 1,
                          ": YAML syntax error: the parser makes no progress here (a stray ',' "
                          "outside a [list] or {map}?)"));
      fatal_ = true;
      return;
    }
    std::vector<YAML::Node> docs = YAML::LoadAll(text);
    if (docs.size() > 1) {
      Fail(docs[1], "", absl::StrCat("expected one YAML document, found ", docs.size()));
      fatal_ = true;
    } else if (docs.size() == 1) {
      root_ = docs[0];
    }
  } catch (const YAML::Exception& e) {
    // Parser errors carry a 0-based mark; other yaml-cpp errors may not.
    const std::string where = e.mark.is_null() ? file_ : absl::StrCat(file_, ":", e.mark.line + 1);
    Record(e.mark.is_null() ? 0 : e.mark.line + 1,
           absl::StrCat(where, ": YAML syntax error: ", e.msg));
    fatal_ = true;
  }
}

bool YamlReader::FailOnTabIndentation(const std::string& text) {
  bool found = false;
  int line = 0;
  for (absl::string_view row : absl::StrSplit(text, '\n')) {
    ++line;
    const size_t content = row.find_first_not_of(" \t");
    // yaml-cpp refuses a tab before the content of any line, comments and blank lines too.
    const absl::string_view lead = row.substr(0, std::min(content, row.size()));
    if (lead.find('\t') == absl::string_view::npos) continue;
    Record(line, absl::StrCat(file_, ":", line,
                              ": tab character in indentation (YAML indents with spaces)"));
    found = true;
  }
  return found;
}

void YamlReader::Record(int line, std::string error) {
  ++errors_;
  if (static_cast<int>(errors_list_.size()) < kMaxKeptErrors) {
    errors_list_.push_back({line, std::move(error)});
  }
  // In file order, so the listing reads like a compiler's; the cap keeps the first lines.
  std::vector<std::pair<int, std::string>> sorted = errors_list_;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  std::string message;
  const int shown = std::min<int>(kMaxErrors, static_cast<int>(sorted.size()));
  for (int i = 0; i < shown; ++i) {
    absl::StrAppend(&message, i > 0 ? "\n" : "", sorted[i].second);
  }
  if (const int more = errors_ - shown; more > 0) {
    absl::StrAppend(&message, "\n... and ", more, " more error", more == 1 ? "" : "s");
  }
  status_ = absl::InvalidArgumentError(message);
}

YamlReader YamlReader::FromFile(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return YamlReader(
        path, absl::NotFoundError(absl::StrCat(
                  "cannot open ", path, ": ",
                  std::filesystem::exists(path, error) ? "not a regular file" : "no such file")));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return YamlReader(path, absl::NotFoundError(absl::StrCat("cannot open ", path)));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return YamlReader(path, absl::DataLossError(absl::StrCat("cannot read ", path)));
  return YamlReader(text.str(), path);
}

YamlMap YamlReader::Root(std::vector<absl::string_view> allowed) {
  if (!fatal_ && (!root_.IsDefined() || root_.IsNull())) {
    Record(0, absl::StrCat(file_, ": the file is empty"));
    fatal_ = true;
  }
  return YamlMap(this, fatal_ ? YAML::Node() : root_, "", std::move(allowed));
}

std::string YamlReader::Where(const YAML::Node& at) const {
  if (!at.IsDefined()) return file_;
  const YAML::Mark mark = at.Mark();
  return mark.is_null() ? file_ : absl::StrCat(file_, ":", mark.line + 1);
}

void YamlReader::Fail(const YAML::Node& at, absl::string_view key_path, absl::string_view message) {
  if (fatal_) return;
  const YAML::Mark mark = at.IsDefined() ? at.Mark() : YAML::Mark::null_mark();
  Record(mark.is_null() ? 0 : mark.line + 1,
         key_path.empty() ? absl::StrCat(Where(at), ": ", message)
                          : absl::StrCat(Where(at), ": ", key_path, ": ", message));
}

YamlMap::YamlMap(YamlReader* reader, YAML::Node node, std::string path,
                 std::vector<absl::string_view> allowed, std::optional<YAML::Node> anchor)
    : reader_(reader), anchor_(anchor.value_or(node)), path_(std::move(path)) {
  if (!node.IsDefined() || node.IsNull()) return;
  if (!node.IsMap()) {
    reader_->Fail(node, path_, absl::StrCat("expected a map, got ", Describe(node)));
    failed_ = true;
    return;
  }
  // Bad keys are reported and skipped; the other keys are still read and checked.
  // Copies: the iterator's pair is a temporary, so references into it would dangle.
  for (const auto& pair : node) {
    const YAML::Node key = pair.first;
    if (!key.IsScalar()) {
      reader_->Fail(key, path_, absl::StrCat("keys must be plain names, got ", Describe(key)));
      continue;
    }
    const std::string name = key.Scalar();
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      reader_->Fail(key, JoinPath(path_, name),
                    absl::StrCat("unknown key (allowed: ", absl::StrJoin(allowed, ", "), ")"));
      continue;
    }
    if (Has(name)) {
      reader_->Fail(key, JoinPath(path_, name), "duplicate key");
      continue;
    }
    entries_.push_back({name, key, pair.second});
  }
}

const YamlMap::Entry* YamlMap::Find(absl::string_view key) const {
  for (const Entry& entry : entries_) {
    if (entry.name == key) return &entry;
  }
  return nullptr;
}

bool YamlMap::Has(absl::string_view key) const { return Find(key) != nullptr; }

YAML::Node YamlMap::Get(absl::string_view key) const {
  const Entry* entry = Find(key);
  return entry ? entry->value : YAML::Node(YAML::NodeType::Undefined);
}

std::string YamlMap::Path(absl::string_view key) const { return JoinPath(path_, key); }

std::string YamlMap::Where(absl::string_view key) const {
  const Entry* entry = Find(key);
  return reader_->Where(entry ? entry->key : anchor_);
}

void YamlMap::Fail(absl::string_view key, absl::string_view message) const {
  const Entry* entry = Find(key);
  if (!entry && failed_) return;  // the map's own error says it all
  reader_->Fail(entry ? entry->value : anchor_, Path(key), message);
}

int YamlMap::Int(absl::string_view key, NumberRule rule, std::optional<int> default_value) const {
  if (!Has(key)) {
    if (!default_value) Fail(key, "missing required key");
    return default_value.value_or(0);
  }
  return ReadYamlInt(*reader_, Get(key), Path(key), rule).value_or(default_value.value_or(0));
}

double YamlMap::Number(absl::string_view key, NumberRule rule,
                       std::optional<double> default_value) const {
  if (!Has(key)) {
    if (!default_value) Fail(key, "missing required key");
    return default_value.value_or(0);
  }
  return ReadYamlNumber(*reader_, Get(key), Path(key), rule).value_or(default_value.value_or(0));
}

std::string YamlMap::String(absl::string_view key, std::optional<std::string> default_value) const {
  if (!Has(key)) {
    if (!default_value) Fail(key, "missing required key");
    return default_value.value_or("");
  }
  return ReadYamlString(*reader_, Get(key), Path(key)).value_or(default_value.value_or(""));
}

std::vector<std::string> YamlMap::Strings(absl::string_view key, bool required) const {
  std::vector<std::string> out;
  if (!Has(key)) {
    if (required) Fail(key, "missing required key");
    return out;
  }
  const YAML::Node list = Get(key);
  if (!list.IsSequence()) {
    Fail(key, absl::StrCat("expected a list of strings, got ", Describe(list)));
    return out;
  }
  for (const YAML::Node& element : list) {
    std::optional<std::string> item =
        ReadYamlString(*reader_, element, absl::StrCat(Path(key), "[", out.size(), "]"));
    if (!item) return {};
    out.push_back(std::move(*item));
  }
  return out;
}

YamlMap YamlMap::Map(absl::string_view key, std::vector<absl::string_view> allowed,
                     bool required) const {
  const Entry* entry = Find(key);
  if (!entry) {
    if (required) Fail(key, "missing required key");
    YamlMap absent(reader_, YAML::Node(YAML::NodeType::Undefined), Path(key), std::move(allowed),
                   anchor_);
    // Its keys are missing because it is: one error, not one per key.
    absent.failed_ = failed_ || required;
    return absent;
  }
  return YamlMap(reader_, entry->value, Path(key), std::move(allowed), entry->key);
}

std::optional<int> ReadYamlInt(YamlReader& reader, const YAML::Node& node,
                               absl::string_view key_path, NumberRule rule) {
  int64_t value = 0;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value) ||
      value > std::numeric_limits<int>::max() || !Satisfies(static_cast<double>(value), rule)) {
    reader.Fail(node, key_path,
                absl::StrCat("expected ", RuleText(rule, true), ", got ", Describe(node)));
    return std::nullopt;
  }
  return static_cast<int>(value);
}

std::optional<double> ReadYamlNumber(YamlReader& reader, const YAML::Node& node,
                                     absl::string_view key_path, NumberRule rule) {
  double value = 0;
  if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !std::isfinite(value) ||
      !Satisfies(value, rule)) {
    reader.Fail(node, key_path,
                absl::StrCat("expected ", RuleText(rule, false), ", got ", Describe(node)));
    return std::nullopt;
  }
  return value;
}

std::optional<std::string> ReadYamlString(YamlReader& reader, const YAML::Node& node,
                                          absl::string_view key_path) {
  if (!node.IsScalar()) {
    reader.Fail(node, key_path, absl::StrCat("expected a string, got ", Describe(node)));
    return std::nullopt;
  }
  return node.Scalar();
}

}  // namespace dsv4
