// Parity with Hugging Face's JS tokenizer (tests/tokenizer_parity.mjs, which runs the
// @huggingface/tokenizers package pinned in third_party/js): generated texts and the runner.
#ifndef DSV4_TESTS_TOKENIZER_PARITY_H_
#define DSV4_TESTS_TOKENIZER_PARITY_H_

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace dsv4::testing {

// The normalizer chain of the official build_compressed_token_map (spec §3.1), as the
// Python `tokenizers` package serialises it into a tokenizer.json "normalizer".
inline constexpr char kEngramNormalizerJson[] = R"json({"type": "Sequence", "normalizers": [
  {"type": "NFKC"}, {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
  {"type": "Replace", "pattern": {"Regex": "[ \\t\\r\\n]+"}, "content": " "},
  {"type": "Replace", "pattern": {"Regex": "^ $"}, "content": "\ue000"},
  {"type": "Strip", "strip_left": true, "strip_right": true},
  {"type": "Replace", "pattern": {"String": "\ue000"}, "content": " "}]})json";

// Why the JS side cannot run here, when node is not installed: then the test skips, except
// under CI (CI=true), where scripts/install-deps.sh has run and a missing node is a failure.
// A missing npm package is no reason: tokenizer_parity.mjs then fails, naming the fix.
inline std::optional<std::string> JsParityUnavailable() {
  if (RunCommand("command -v node").exit_code == 0) return std::nullopt;
  const std::string why = "node is not installed: run scripts/install-deps.sh";
  const char* ci = std::getenv("CI");
  if (ci != nullptr && std::string(ci) == "true") ADD_FAILURE() << why;
  return why;
}

// Runs `node tests/tokenizer_parity.mjs <mode> <in1> <in2> <out>` and returns the JSON it
// wrote; fails the test (and returns null) when it does not succeed.
inline nlohmann::json RunJsParity(const std::string& mode, const std::string& in1,
                                  const std::string& in2, const std::string& out) {
  const CommandResult r = RunCommand(absl::StrCat("node tests/tokenizer_parity.mjs ", mode, " '",
                                                  in1, "' '", in2, "' '", out, "'"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  if (r.exit_code != 0) return nullptr;
  std::ifstream in(out);
  return nlohmann::json::parse(in);
}

// Generated test texts, valid UTF-8: words in mixed case, precomposed and combining accents
// (also spacing and enclosing marks), ligatures, full-width and half-width forms, runs of
// odd whitespace, the U+E000 sentinel, Greek with final capital sigma, Turkish dotted and
// dotless i, emoji (with ZWJ and skin tones), CJK, kana, Hangul, Devanagari, Arabic,
// digits, punctuation, added tokens, and random code points assigned in `assigned` (the
// caller's Unicode data: random unassigned code points would only test Unicode versions).
template <typename IsAssigned>
std::vector<std::string> ParityTexts(int count, uint32_t seed, IsAssigned assigned) {
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
  auto utf8 = [](uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  };
  auto range = [&](uint32_t lo, uint32_t hi, std::string* out) {
    utf8(lo + static_cast<uint32_t>(rng() % (hi - lo + 1)), out);
  };
  const std::vector<std::string> words = {"the",         "The",
                                          "THE",         "tHe",
                                          "and",         "hello",
                                          "World",       "Zürich",
                                          "naïve",       "Ǆemal",
                                          "ΟΔΟΣ",        "Σοφός",
                                          "ΣΊΣΥΦΟΣ",     "İstanbul",
                                          "ıi",          "IĞDIR",
                                          "straße",      "STRASSE",
                                          "ẞ",           "ﬁne",
                                          "ﬂow",         "Ａｐｐｌｅ",
                                          "ｶﾀｶﾅ",        "深度求索",
                                          "こんにちは",  "한국어",
                                          "दुनिया",       "مرحبا",
                                          "Привет",      "😀",
                                          "👩‍💻", "👍🏽",
                                          "Ⅻ",           "①",
                                          "x²",          "Å",
                                          "e\u0301",     "n\u0303",
                                          "<think>",     "</think>",
                                          "<｜User｜>",  "<｜Assistant｜>",
                                          "123456",      "3.14",
                                          "don't",       "\u0915\u093E",
                                          "a\u20DD",     "\u1E9B\u0323"};
  const std::vector<std::string> spaces = {
      " ",  "  ",     "\t",     "\n",     "\r\n",   "\n\n",   " \t ",   "\r",     "\v",
      "\f", "\u00A0", "\u3000", "\u0085", "\u2028", "\u2029", "\uFEFF", "\uE000", "\u200B"};
  std::vector<std::string> texts;
  texts.reserve(count);
  for (int t = 0; t < count; ++t) {
    std::string s;
    if (t % 50 == 0) {  // whitespace only: the single-space sentinel path and its neighbours
      for (int k = pick(4); k >= 0; --k) s += spaces[pick(static_cast<int>(spaces.size()))];
      texts.push_back(s);
      continue;
    }
    const int pieces = 1 + pick(12);
    for (int p = 0; p < pieces; ++p) {
      switch (pick(14)) {
        case 0:
        case 1:
        case 2:
          s += words[pick(static_cast<int>(words.size()))];
          break;
        case 3:
          s += spaces[pick(static_cast<int>(spaces.size()))];
          break;
        case 4:
          s += " ";
          break;
        case 5:  // a random ASCII word in random case
          for (int k = 1 + pick(8); k > 0; --k) {
            const char c = static_cast<char>('a' + pick(26));
            s.push_back(pick(2) ? c : static_cast<char>(c - 'a' + 'A'));
          }
          break;
        case 6:  // Latin-1 and Latin Extended-A letters, then combining marks
          range(0xC0, 0x17F, &s);
          for (int k = pick(3); k > 0; --k) range(0x300, 0x36F, &s);
          break;
        case 7:  // Greek capitals and small letters, often ending in capital sigma
          for (int k = 1 + pick(5); k > 0; --k) range(0x391, 0x3C9, &s);
          if (pick(2)) s += "Σ";
          break;
        case 8:  // compatibility forms: ligatures, full-width, half-width, letterlike
          switch (pick(4)) {
            case 0:
              range(0xFB00, 0xFB06, &s);
              break;
            case 1:
              range(0xFF01, 0xFF5E, &s);
              break;
            case 2:
              range(0xFF61, 0xFF9F, &s);
              break;
            default:
              range(0x2100, 0x218B, &s);
              break;
          }
          break;
        case 9:  // CJK, kana, Hangul
          switch (pick(3)) {
            case 0:
              range(0x4E00, 0x9FA5, &s);
              break;
            case 1:
              range(0x3041, 0x30FF, &s);
              break;
            default:
              range(0xAC00, 0xD7A3, &s);
              break;
          }
          break;
        case 10:  // emoji, sometimes with a skin tone or joined
          range(0x1F600, 0x1F64F, &s);
          if (pick(3) == 0) range(0x1F3FB, 0x1F3FF, &s);
          if (pick(4) == 0) s += "\u200D\u2764\uFE0F";
          break;
        case 11:  // ASCII punctuation, digits and C0 controls
          for (int k = 1 + pick(4); k > 0; --k) utf8(static_cast<uint32_t>(1 + pick(0x7F)), &s);
          break;
        case 12:  // Devanagari, Arabic, Hebrew with their marks
          switch (pick(3)) {
            case 0:
              range(0x900, 0x97F, &s);
              break;
            case 1:
              range(0x600, 0x6FF, &s);
              break;
            default:
              range(0x591, 0x5EA, &s);
              break;
          }
          break;
        default:  // any assigned scalar value, any plane
          for (int k = 1 + pick(3); k > 0; --k) {
            uint32_t cp;
            do {
              cp = static_cast<uint32_t>(pick(4) ? 0x80 + pick(0x10000 - 0x80)
                                                 : 0x10000 + pick(0x110000 - 0x10000));
            } while ((cp >= 0xD800 && cp <= 0xDFFF) || !assigned(cp));
            utf8(cp, &s);
          }
          break;
      }
    }
    texts.push_back(s);
  }
  return texts;
}

}  // namespace dsv4::testing

#endif  // DSV4_TESTS_TOKENIZER_PARITY_H_
