#include "core/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using json = nlohmann::json;

constexpr int kMaxTokenId = 1 << 20;          // a larger id is a corrupt file, not a vocabulary
constexpr size_t kMaxCachedWordBytes = 256;   // as HF: long pieces rarely repeat
constexpr size_t kMaxCacheEntries = 1 << 16;  // bounds memory on adversarial input

// The pre-tokenizer HF's ByteLevel applies when use_regex is true (GPT-2's pattern).
constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------
// UTF-8

// Length of the sequence a lead byte starts; 0 for a byte that cannot start one.
int Utf8SequenceLength(uint8_t b) {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether `b` can follow the lead byte at position `index` (1..3) of a well-formed sequence
// (Unicode Table 3-7: the second byte's range depends on the lead).
bool ValidContinuation(uint8_t lead, int index, uint8_t b) {
  if (index > 1) return (b & 0xC0) == 0x80;
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

// How many bytes at `s[pos]` form a well-formed prefix of one character (at least 1), and
// whether that prefix is the whole character.
std::pair<int, bool> Utf8Prefix(absl::string_view s, size_t pos) {
  const uint8_t lead = s[pos];
  const int len = Utf8SequenceLength(lead);
  if (len <= 1) return {1, len == 1};
  int k = 1;
  while (k < len && pos + k < s.size() && ValidContinuation(lead, k, s[pos + k])) ++k;
  return {k, k == len};
}

// `bytes` as valid UTF-8, each maximal ill-formed subpart replaced by U+FFFD (what Rust's
// String::from_utf8_lossy, and so HF's decoder, does).
std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const auto [n, complete] = Utf8Prefix(bytes, pos);
    if (complete) {
      out.append(bytes.data() + pos, n);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    pos += n;
  }
  return out;
}

// Length of the unfinished character at the end of `s`: a well-formed prefix that more
// bytes could complete (0 when `s` ends on a character boundary or an ill-formed byte).
size_t UnfinishedUtf8Tail(absl::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    const uint8_t lead = s[s.size() - k];
    if ((lead & 0xC0) == 0x80) continue;  // a continuation byte: the lead is further back
    if (Utf8SequenceLength(lead) <= static_cast<int>(k)) return 0;
    const auto [n, complete] = Utf8Prefix(s, s.size() - k);
    return !complete && static_cast<size_t>(n) == k ? k : 0;
  }
  return 0;
}

// The alphabet's code points are all below U+0800: one or two UTF-8 bytes.
void AppendCodepoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---------------------------------------------------------------------------------------
// The ByteLevel alphabet: GPT-2's bijection from bytes to printable code points, so that a
// vocabulary of byte strings can be written as JSON text (a space is "Ġ", U+0120).

struct ByteLevelAlphabet {
  std::array<std::string, 256> char_of_byte;  // UTF-8 of the code point standing for a byte
  std::array<int, 324> byte_of_codepoint;     // inverse; -1 where no byte maps
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet* alphabet = [] {
    auto* a = new ByteLevelAlphabet;
    a->byte_of_codepoint.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next++;
      AppendCodepoint(cp, &a->char_of_byte[b]);
      a->byte_of_codepoint[cp] = static_cast<int>(b);
    }
    return a;
  }();
  return *alphabet;
}

std::string ToByteLevel(absl::string_view bytes) {
  std::string out;
  for (uint8_t b : bytes) out += Alphabet().char_of_byte[b];
  return out;
}

// What HF's ByteLevel decoder makes of one token: the bytes its characters stand for, or
// the token's own UTF-8 when any character is outside the alphabet (e.g. "<｜User｜>").
std::string TokenToBytes(absl::string_view token) {
  std::string bytes;
  size_t pos = 0;
  while (pos < token.size()) {
    const auto [n, complete] = Utf8Prefix(token, pos);
    if (!complete) return std::string(token);
    uint32_t cp = static_cast<uint8_t>(token[pos]);
    if (n > 1) {
      cp &= 0x7F >> n;
      for (int i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<uint8_t>(token[pos + i]) & 0x3F);
    }
    if (cp >= Alphabet().byte_of_codepoint.size() || Alphabet().byte_of_codepoint[cp] < 0)
      return std::string(token);
    bytes.push_back(static_cast<char>(Alphabet().byte_of_codepoint[cp]));
    pos += n;
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------
// PCRE2

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
using Regex = std::unique_ptr<pcre2_code, CodeDeleter>;
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// Oniguruma (HF's engine) writes a code point as \uHHHH, which PCRE2 spells \x{HHHH}.
std::string OnigurumaToPcre2(absl::string_view pattern) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const bool code_point = pattern[i] == '\\' && i + 5 < pattern.size() && pattern[i + 1] == 'u' &&
                            std::all_of(pattern.begin() + i + 2, pattern.begin() + i + 6,
                                        [](unsigned char c) { return std::isxdigit(c) != 0; });
    if (code_point) {
      absl::StrAppend(&out, "\\x{", pattern.substr(i + 2, 4), "}");
      i += 5;
    } else if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      out.append(pattern.data() + i, 2);  // any other escape passes through whole
      ++i;
    } else {
      out.push_back(pattern[i]);
    }
  }
  return out;
}

// UCP makes \s, \w and friends Unicode-aware, as Oniguruma is; with MATCH_INVALID_UTF,
// bytes that are not UTF-8 simply match nothing instead of failing the match.
absl::StatusOr<Regex> CompileRegex(absl::string_view pattern, bool literal,
                                   const std::string& where) {
  const uint32_t options =
      PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  const std::string translated = literal ? std::string(pattern) : OnigurumaToPcre2(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat(where, ": bad regex at offset ", offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  // JIT is several times faster; where it is unavailable PCRE2 interprets, same results.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return Regex(code);
}

struct Span {
  size_t begin;
  size_t end;
  bool match;
};

// The pieces of `s`: the regex's successive non-empty matches and the gaps between them
// (HF's Pattern::find_matches).
void FindMatches(const pcre2_code* regex, absl::string_view s, pcre2_match_data* data,
                 std::vector<Span>* spans) {
  spans->clear();
  size_t gap_begin = 0;
  size_t start = 0;
  while (start < s.size()) {
    // rc 0 means the ovector is too small for the captures; the whole match is still set.
    const int rc = pcre2_match(regex, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), start, 0,
                               data, nullptr);
    if (rc < 0) break;  // no match, or a resource limit: the rest stays one unmatched span
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    if (ovector[1] == ovector[0]) {  // an empty match splits nothing: step over a character
      if (ovector[0] >= s.size()) break;
      start = ovector[0] + Utf8Prefix(s, ovector[0]).first;
      continue;
    }
    if (ovector[0] > gap_begin) spans->push_back({gap_begin, ovector[0], false});
    spans->push_back({ovector[0], ovector[1], true});
    gap_begin = start = ovector[1];
  }
  if (gap_begin < s.size()) spans->push_back({gap_begin, s.size(), false});
}

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Turns matched/unmatched spans into pieces as HF's SplitDelimiterBehavior does.
void ApplyBehavior(SplitBehavior behavior, const std::vector<Span>& spans,
                   std::vector<std::pair<size_t, size_t>>* pieces) {
  pieces->clear();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Span& s : spans)
        if (!s.match) pieces->push_back({s.begin, s.end});
      return;
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) pieces->push_back({s.begin, s.end});
      return;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.match && !previous_match && !pieces->empty()) {
          pieces->back().second = s.end;
        } else {
          pieces->push_back({s.begin, s.end});
        }
        previous_match = s.match;
      }
      return;
    case SplitBehavior::kMergedWithNext:
      for (auto s = spans.rbegin(); s != spans.rend(); ++s) {
        if (s->match && !previous_match && !pieces->empty()) {
          pieces->back().first = s->begin;
        } else {
          pieces->push_back({s->begin, s->end});
        }
        previous_match = s->match;
      }
      std::reverse(pieces->begin(), pieces->end());
      return;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.match == previous_match && !pieces->empty()) {
          pieces->back().second = s.end;
        } else {
          pieces->push_back({s.begin, s.end});
        }
        previous_match = s.match;
      }
      return;
  }
}

// One pre-tokenizer step: a Split, or ByteLevel (optional prefix space, optional GPT-2 split).
struct PreTokenizerStep {
  Regex regex;  // null: no splitting
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

// Added tokens matched by a byte trie: the longest token starting at a position wins.
class AddedTokenTrie {
 public:
  bool empty() const { return token_.size() == 1; }

  void Insert(absl::string_view content, int id) {
    int node = 0;
    for (uint8_t b : content) {
      auto [it, inserted] = edges_.try_emplace(Key(node, b), static_cast<int>(token_.size()));
      if (inserted) token_.push_back(-1);
      node = it->second;
    }
    token_[node] = id;
    first_byte_[static_cast<uint8_t>(content[0])] = true;
  }

  // {length, id} of the longest added token at text[pos], or {0, -1}.
  std::pair<size_t, int> LongestAt(absl::string_view text, size_t pos) const {
    std::pair<size_t, int> best = {0, -1};
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) return best;
    int node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto it = edges_.find(Key(node, static_cast<uint8_t>(text[i])));
      if (it == edges_.end()) break;
      node = it->second;
      if (token_[node] >= 0) best = {i + 1 - pos, token_[node]};
    }
    return best;
  }

 private:
  static uint64_t Key(int node, uint8_t b) { return (static_cast<uint64_t>(node) << 8) | b; }
  absl::flat_hash_map<uint64_t, int> edges_;
  std::vector<int> token_ = {-1};  // per node: the added token ending there, or -1
  std::array<bool, 256> first_byte_{};
};

uint64_t PairKey(int a, int b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

template <typename... Args>
absl::Status Invalid(const std::string& source, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", args...));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A JSON member that may be absent or null.
const json* Member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

bool Flag(const json& object, const char* key, bool fallback) {
  const json* value = Member(object, key);
  return value == nullptr ? fallback : value->get<bool>();
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  struct MergeResult {
    int rank;
    int id;
  };
  enum Kind : uint8_t { kNone, kModel, kAdded, kSpecial };

  std::string source;
  absl::flat_hash_map<std::string, int> vocab;  // model vocabulary, byte-level strings
  absl::flat_hash_map<uint64_t, MergeResult> merges;
  std::array<int, 256> byte_id;  // the model token of each single byte, or -1
  std::optional<int> unk_id;
  bool fuse_unk = false;
  bool ignore_merges = false;

  absl::flat_hash_map<std::string, int> added;  // content -> id
  // HF splits off tokens marked normalized=false first, then the others.
  std::array<AddedTokenTrie, 2> added_tries;
  std::vector<PreTokenizerStep> steps;
  std::vector<int> prefix_ids, suffix_ids;  // the post-processor's template around the text

  std::vector<std::string> id_token;  // as written in the file
  std::vector<std::string> id_bytes;  // what the ByteLevel decoder makes of it
  std::vector<Kind> id_kind;
  std::optional<int> bos, eos;

  mutable std::mutex cache_mu;
  mutable absl::flat_hash_map<std::string, std::vector<int>> cache;  // word bytes -> ids

  absl::Status ParseModel(const json& model);
  absl::Status ParseAddedTokens(const json& list);
  absl::Status ParsePreTokenizer(const json& p, const std::string& where, bool* byte_level);
  absl::Status ParsePostProcessor(const json& p, const std::string& where);
  absl::Status SetToken(int64_t id, const std::string& token, Kind kind, const std::string& where);

  void SplitAdded(absl::string_view text, int pass, pcre2_match_data* data,
                  std::vector<int>* ids) const;
  void EncodeSegment(absl::string_view text, pcre2_match_data* data, std::vector<int>* ids) const;
  void EncodeWord(absl::string_view word, std::vector<int>* ids) const;
  void Bpe(absl::string_view word, std::vector<int>* ids) const;
};

absl::Status Tokenizer::Impl::SetToken(int64_t id, const std::string& token, Kind kind,
                                       const std::string& where) {
  if (id < 0 || id >= kMaxTokenId)
    return Invalid(source, where, ": token id ", id, " is out of range [0, ", kMaxTokenId, ")");
  if (static_cast<size_t>(id) >= id_token.size()) {
    id_token.resize(id + 1);
    id_kind.resize(id + 1, kNone);
  }
  if (id_kind[id] != kNone && id_token[id] != token)
    return Invalid(source, where, ": id ", id, " is given to both \"", id_token[id], "\" and \"",
                   token, "\"");
  id_token[id] = token;
  id_kind[id] = std::max(id_kind[id], kind);
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParseModel(const json& model) {
  if (!model.is_object()) return Invalid(source, "\"model\" must be an object");
  const json* type = Member(model, "type");
  if (type == nullptr) return Invalid(source, "model.type is missing");
  if (*type != "BPE")
    return Invalid(source, "unknown model type '", type->get<std::string>(),
                   "' (only byte-level BPE is supported)");
  if (const json* d = Member(model, "dropout"); d != nullptr && d->get<double>() != 0.0)
    return Invalid(source, "model.dropout is not supported (encoding must be deterministic)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const json* v = Member(model, key); v != nullptr && !v->get<std::string>().empty())
      return Invalid(source, "model.", key, " is not supported by byte-level BPE");
  }
  if (Flag(model, "byte_fallback", false))
    return Invalid(source, "model.byte_fallback is not supported by byte-level BPE");
  fuse_unk = Flag(model, "fuse_unk", false);
  ignore_merges = Flag(model, "ignore_merges", false);

  const json* v = Member(model, "vocab");
  if (v == nullptr || !v->is_object()) return Invalid(source, "model.vocab must be an object");
  vocab.reserve(v->size());
  for (const auto& [token, id] : v->items()) {
    if (!id.is_number_integer())
      return Invalid(source, "model.vocab[\"", token, "\"] must be an integer id");
    RETURN_IF_ERROR(SetToken(id.get<int64_t>(), token, kModel, "model.vocab"));
    vocab[token] = id.get<int>();
  }
  if (const json* unk = Member(model, "unk_token")) {
    const auto it = vocab.find(unk->get<std::string>());
    if (it == vocab.end())
      return Invalid(source, "model.unk_token \"", unk->get<std::string>(),
                     "\" is not in the vocab");
    unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab.find(Alphabet().char_of_byte[b]);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }

  const json* m = Member(model, "merges");
  if (m == nullptr || !m->is_array()) return Invalid(source, "model.merges must be an array");
  merges.reserve(m->size());
  for (size_t rank = 0; rank < m->size(); ++rank) {
    const json& merge = (*m)[rank];
    std::string parts[2];
    if (merge.is_string()) {  // "a b": byte-level tokens never contain a space
      const std::string& text = merge.get_ref<const std::string&>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
        return Invalid(source, "model.merges[", rank, "] (\"", text, "\") is not \"A B\"");
      parts[0] = text.substr(0, space);
      parts[1] = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      parts[0] = merge[0].get<std::string>();
      parts[1] = merge[1].get<std::string>();
    } else {
      return Invalid(source, "model.merges[", rank, "] must be \"A B\" or [\"A\", \"B\"]");
    }
    int ids[3];
    const std::string tokens[3] = {parts[0], parts[1], parts[0] + parts[1]};
    for (int i = 0; i < 3; ++i) {
      const auto it = vocab.find(tokens[i]);
      if (it == vocab.end())
        return Invalid(source, "model.merges[", rank, "] (\"", parts[0], " ", parts[1],
                       "\") refers to unknown token \"", tokens[i], "\"");
      ids[i] = it->second;
    }
    // A later duplicate wins, as in HF (its merges are collected into a map).
    merges.insert_or_assign(PairKey(ids[0], ids[1]), MergeResult{static_cast<int>(rank), ids[2]});
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParseAddedTokens(const json& list) {
  if (!list.is_array()) return Invalid(source, "added_tokens must be an array");
  for (size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const std::string where = absl::StrCat("added_tokens[", i, "]");
    const json* id = Member(t, "id");
    const json* content = Member(t, "content");
    if (id == nullptr || !id->is_number_integer() || content == nullptr || !content->is_string())
      return Invalid(source, where, " needs an integer \"id\" and a string \"content\"");
    const std::string text = content->get<std::string>();
    if (text.empty()) return Invalid(source, where, ": empty content");
    for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
      if (Flag(t, flag, false))
        return Invalid(source, where, " (\"", text, "\"): ", flag, " is not supported");
    }
    const bool special = Flag(t, "special", false);
    RETURN_IF_ERROR(SetToken(id->get<int64_t>(), text, special ? kSpecial : kAdded, where));
    const int token_id = id->get<int>();
    added[text] = token_id;
    added_tries[Flag(t, "normalized", true) ? 1 : 0].Insert(text, token_id);
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParsePreTokenizer(const json& p, const std::string& where,
                                                bool* byte_level) {
  if (!p.is_object()) return Invalid(source, where, " must be an object");
  const json* type = Member(p, "type");
  const std::string kind = type != nullptr && type->is_string() ? type->get<std::string>() : "";
  if (kind == "Sequence") {
    const json* list = Member(p, "pretokenizers");
    if (list == nullptr || !list->is_array())
      return Invalid(source, where, ".pretokenizers must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], absl::StrCat(where, ".pretokenizers[", i, "]"),
                                        byte_level));
    }
    return absl::OkStatus();
  }
  if (*byte_level)
    return Invalid(source, where, ": ByteLevel must be the last pre-tokenizer, found ", kind,
                   " after it");
  PreTokenizerStep step;
  if (kind == "ByteLevel") {
    *byte_level = true;
    step.add_prefix_space = Flag(p, "add_prefix_space", true);
    if (Flag(p, "use_regex", true)) {
      ASSIGN_OR_RETURN(step.regex,
                       CompileRegex(kGpt2Pattern, false, absl::StrCat(source, ": ", where)));
    }
  } else if (kind == "Split") {
    const json* pattern = Member(p, "pattern");
    const bool literal = pattern != nullptr && pattern->is_object() && pattern->contains("String");
    const char* key = literal ? "String" : "Regex";
    if (pattern == nullptr || !pattern->is_object() || !pattern->contains(key) ||
        !pattern->at(key).is_string())
      return Invalid(source, where, ".pattern must be {\"Regex\": ...} or {\"String\": ...}");
    ASSIGN_OR_RETURN(step.regex, CompileRegex(pattern->at(key).get<std::string>(), literal,
                                              absl::StrCat(source, ": ", where, ".pattern")));
    static const auto* kBehaviors = new absl::flat_hash_map<std::string, SplitBehavior>{
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous}};
    const json* behavior = Member(p, "behavior");
    const auto it = behavior != nullptr && behavior->is_string()
                        ? kBehaviors->find(behavior->get<std::string>())
                        : kBehaviors->end();
    if (it == kBehaviors->end())
      return Invalid(source, where,
                     ".behavior must be Removed, Isolated, MergedWithPrevious, MergedWithNext "
                     "or Contiguous");
    step.behavior = it->second;
    step.invert = Flag(p, "invert", false);
  } else {
    return Invalid(source, where, ": pre-tokenizer type '", kind,
                   "' is not supported (Sequence, Split, ByteLevel)");
  }
  steps.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::ParsePostProcessor(const json& p, const std::string& where) {
  const json* type = Member(p, "type");
  const std::string kind = type != nullptr && type->is_string() ? type->get<std::string>() : "";
  if (kind == "ByteLevel") return absl::OkStatus();  // only adjusts offsets
  if (kind == "Sequence") {
    const json* list = Member(p, "processors");
    if (list == nullptr || !list->is_array())
      return Invalid(source, where, ".processors must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(ParsePostProcessor((*list)[i], absl::StrCat(where, ".processors[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (kind != "TemplateProcessing")
    return Invalid(source, where, ": post-processor type '", kind,
                   "' is not supported (TemplateProcessing, ByteLevel, Sequence)");
  // Only the single-sequence template matters: Encode takes one text.
  const json* single = Member(p, "single");
  const json* specials = Member(p, "special_tokens");
  if (single == nullptr || !single->is_array())
    return Invalid(source, where, ".single must be an array");
  std::vector<int> before, after;
  bool seen_sequence = false;
  for (const json& item : *single) {
    if (const json* seq = Member(item, "Sequence")) {
      if (seen_sequence || seq->value("id", "") != "A")
        return Invalid(source, where, ".single must hold sequence A exactly once");
      seen_sequence = true;
    } else if (const json* special = Member(item, "SpecialToken")) {
      const std::string name = special->at("id").get<std::string>();
      const json* entry = specials == nullptr ? nullptr : Member(*specials, name.c_str());
      if (entry == nullptr || !entry->contains("ids") || !entry->at("ids").is_array())
        return Invalid(source, where, ": special token \"", name,
                       "\" has no entry with \"ids\" in special_tokens");
      for (const json& id : entry->at("ids")) {
        const int64_t value = id.get<int64_t>();
        if (value < 0 || static_cast<size_t>(value) >= id_kind.size() || id_kind[value] == kNone)
          return Invalid(source, where, ": special token \"", name, "\" has unknown id ", value);
        (seen_sequence ? after : before).push_back(static_cast<int>(value));
      }
    } else {
      return Invalid(source, where, ".single items must be Sequence or SpecialToken");
    }
  }
  if (!seen_sequence) return Invalid(source, where, ".single must hold sequence A exactly once");
  // Processors in a Sequence apply in order, each wrapping the previous result.
  prefix_ids.insert(prefix_ids.begin(), before.begin(), before.end());
  suffix_ids.insert(suffix_ids.end(), after.begin(), after.end());
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Encoding

void Tokenizer::Impl::Bpe(absl::string_view word, std::vector<int>* ids) const {
  struct Symbol {
    int id;
    int prev;
    int next;
  };
  struct Candidate {
    int rank;
    int pos;
    int left;
    int right;
    int merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (uint8_t b : word) {
    int id = byte_id[b];
    if (id < 0) {  // a byte missing from the vocab: Parse made sure unk_token exists
      if (fuse_unk && !symbols.empty() && symbols.back().id == *unk_id) continue;
      id = *unk_id;
    }
    const int n = static_cast<int>(symbols.size());
    symbols.push_back({id, n - 1, n + 1});
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  // Lowest rank first, leftmost on ties; stale candidates are skipped when popped.
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int pos) {
    const int next = symbols[pos].next;
    if (next < 0) return;
    const auto it = merges.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it != merges.end())
      queue.push({it->second.rank, pos, symbols[pos].id, symbols[next].id, it->second.id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.pos];
    if (left.id != c.left || left.next < 0 || symbols[left.next].id != c.right) continue;
    const int right = left.next;
    left.id = c.merged;
    left.next = symbols[right].next;
    if (left.next >= 0) symbols[left.next].prev = c.pos;
    symbols[right].id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

void Tokenizer::Impl::EncodeWord(absl::string_view word, std::vector<int>* ids) const {
  if (ignore_merges) {  // a word that is itself a token skips merging (Llama-3 style)
    const auto it = vocab.find(ToByteLevel(word));
    if (it != vocab.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    const auto it = cache.find(word);
    if (it != cache.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = ids->size();
  Bpe(word, ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu);
    if (cache.size() < kMaxCacheEntries)
      cache.try_emplace(std::string(word), std::vector<int>(ids->begin() + start, ids->end()));
  }
}

void Tokenizer::Impl::EncodeSegment(absl::string_view text, pcre2_match_data* data,
                                    std::vector<int>* ids) const {
  if (text.empty()) return;
  std::vector<absl::string_view> pieces = {text}, next;
  std::deque<std::string> prefixed;  // owns pieces that gained a prefix space
  std::vector<Span> spans;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const PreTokenizerStep& step : steps) {
    next.clear();
    for (absl::string_view piece : pieces) {
      if (step.add_prefix_space && piece[0] != ' ') {
        prefixed.push_back(absl::StrCat(" ", piece));
        piece = prefixed.back();
      }
      if (!step.regex) {
        next.push_back(piece);
        continue;
      }
      FindMatches(step.regex.get(), piece, data, &spans);
      if (step.invert)
        for (Span& s : spans) s.match = !s.match;
      ApplyBehavior(step.behavior, spans, &ranges);
      for (const auto& [begin, end] : ranges)
        if (end > begin) next.push_back(piece.substr(begin, end - begin));
    }
    pieces.swap(next);
  }
  for (absl::string_view piece : pieces) EncodeWord(piece, ids);
}

void Tokenizer::Impl::SplitAdded(absl::string_view text, int pass, pcre2_match_data* data,
                                 std::vector<int>* ids) const {
  if (pass == 2) return EncodeSegment(text, data, ids);
  if (added_tries[pass].empty()) return SplitAdded(text, pass + 1, data, ids);
  size_t segment = 0;
  for (size_t pos = 0; pos < text.size();) {
    const auto [length, id] = added_tries[pass].LongestAt(text, pos);
    if (length == 0) {
      ++pos;
      continue;
    }
    SplitAdded(text.substr(segment, pos - segment), pass + 1, data, ids);
    ids->push_back(id);
    pos += length;
    segment = pos;
  }
  SplitAdded(text.substr(segment), pass + 1, data, ids);
}

// ---------------------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return Parse(text, path);
}

absl::StatusOr<Tokenizer> Tokenizer::LoadFromDir(const std::string& dir) {
  const std::filesystem::path root(dir);
  ASSIGN_OR_RETURN(Tokenizer tokenizer, Load((root / "tokenizer.json").string()));
  const std::string config_path = (root / "tokenizer_config.json").string();
  if (!std::filesystem::exists(config_path)) return tokenizer;
  ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
  try {
    const json config = json::parse(text);
    for (const auto& [key, slot] : {std::pair{"bos_token", &tokenizer.impl_->bos},
                                    std::pair{"eos_token", &tokenizer.impl_->eos}}) {
      const json* value = Member(config, key);
      if (value == nullptr) continue;
      const std::string name =
          value->is_object() ? value->at("content").get<std::string>() : value->get<std::string>();
      *slot = tokenizer.TokenId(name);
      if (!*slot) return Invalid(config_path, key, " \"", name, "\" is not a token");
    }
  } catch (const json::exception& e) {
    return Invalid(config_path, e.what());
  }
  return tokenizer;
}

absl::StatusOr<Tokenizer> Tokenizer::Parse(absl::string_view json_text, const std::string& source) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::parse_error& e) {
    return Invalid(source, "malformed JSON at byte ", e.byte, ": ", e.what());
  }
  if (!root.is_object()) return Invalid(source, "expected a JSON object at the top level");

  auto impl = std::make_unique<Impl>();
  impl->source = source;
  // Type mismatches the checks below do not name still become errors, never crashes.
  try {
    if (Member(root, "normalizer") != nullptr)
      return Invalid(source, "a normalizer is not supported (DeepSeek's is null)");
    const json* model = Member(root, "model");
    if (model == nullptr) return Invalid(source, "\"model\" is missing");
    RETURN_IF_ERROR(impl->ParseModel(*model));
    if (const json* added = Member(root, "added_tokens")) {
      RETURN_IF_ERROR(impl->ParseAddedTokens(*added));
    }
    const json* pre = Member(root, "pre_tokenizer");
    bool byte_level = false;
    if (pre != nullptr) {
      RETURN_IF_ERROR(impl->ParsePreTokenizer(*pre, "pre_tokenizer", &byte_level));
    }
    if (!byte_level)
      return Invalid(source,
                     "pre_tokenizer has no ByteLevel step (only byte-level BPE is "
                     "supported)");
    const json* decoder = Member(root, "decoder");
    if (decoder == nullptr || !decoder->is_object() || decoder->value("type", "") != "ByteLevel")
      return Invalid(source, "decoder must be ByteLevel");
    if (const json* post = Member(root, "post_processor")) {
      RETURN_IF_ERROR(impl->ParsePostProcessor(*post, "post_processor"));
    }
  } catch (const json::exception& e) {
    return Invalid(source, e.what());
  }

  for (int b = 0; b < 256; ++b) {
    // HF would fail encoding such a byte (MissingUnkToken); refuse the file up front.
    if (impl->byte_id[b] < 0 && !impl->unk_id)
      return Invalid(source, "model.vocab has no token for byte ", b, " (\"",
                     Alphabet().char_of_byte[b], "\") and there is no unk_token");
  }
  impl->id_bytes.resize(impl->id_token.size());
  for (size_t id = 0; id < impl->id_token.size(); ++id)
    impl->id_bytes[id] = TokenToBytes(impl->id_token[id]);
  Tokenizer tokenizer(std::move(impl));
  tokenizer.impl_->bos = tokenizer.TokenId("<｜begin▁of▁sentence｜>");
  tokenizer.impl_->eos = tokenizer.TokenId("<｜end▁of▁sentence｜>");
  return tokenizer;
}

std::vector<int> Tokenizer::Encode(absl::string_view text, bool add_special_tokens) const {
  std::vector<int> ids;
  if (add_special_tokens) ids = impl_->prefix_ids;
  // One match block serves every regex: only the whole match's offsets are read.
  const MatchData data(pcre2_match_data_create(1, nullptr));
  impl_->SplitAdded(text, 0, data.get(), &ids);
  if (add_special_tokens) ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int id : ids) {
    if (skip_special_tokens && IsSpecial(id)) continue;
    absl::StrAppend(&bytes, TokenBytes(id));
  }
  return Utf8Lossy(bytes);
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->id_token.size()); }

std::optional<int> Tokenizer::TokenId(absl::string_view token) const {
  if (const auto it = impl_->added.find(token); it != impl_->added.end()) return it->second;
  if (const auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

absl::string_view Tokenizer::TokenString(int id) const {
  return id >= 0 && id < vocab_size() ? absl::string_view(impl_->id_token[id]) : "";
}

absl::string_view Tokenizer::TokenBytes(int id) const {
  return id >= 0 && id < vocab_size() ? absl::string_view(impl_->id_bytes[id]) : "";
}

bool Tokenizer::IsSpecial(int id) const {
  return id >= 0 && id < vocab_size() && impl_->id_kind[id] == Impl::kSpecial;
}

std::optional<int> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int> Tokenizer::eos_id() const { return impl_->eos; }

// ---------------------------------------------------------------------------------------
// StreamingDecoder

std::string StreamingDecoder::Push(int id) {
  if (skip_special_tokens_ && tokenizer_->IsSpecial(id)) return "";
  absl::StrAppend(&pending_, tokenizer_->TokenBytes(id));
  const size_t ready = pending_.size() - UnfinishedUtf8Tail(pending_);
  std::string text = Utf8Lossy(absl::string_view(pending_).substr(0, ready));
  pending_.erase(0, ready);
  return text;
}

std::string StreamingDecoder::Flush() {
  std::string text = Utf8Lossy(pending_);
  pending_.clear();
  return text;
}

}  // namespace dsv4
