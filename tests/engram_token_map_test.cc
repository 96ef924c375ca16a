// Engram's compressed token map: EngramNormalize on hand-checked strings (each expectation
// worked out from the Unicode tables and the official normalizer chain), and the maps of
// the shipped V4.1 tokenizers; then both against Hugging Face's JS tokenizer library
// (tests/tokenizer_parity.mjs) on generated text and on every token of the tokenizers.
#include "core/engram_token_map.h"

#include <unicode/uchar.h>

#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tests/tokenizer_parity.h"

namespace dsv4 {
namespace {

std::string Preset(const std::string& name) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + name;
}

TEST(EngramNormalizeTest, AsciiCaseAndOuterSpaces) {
  EXPECT_EQ(EngramNormalize("The"), "the");
  EXPECT_EQ(EngramNormalize(" the"), "the");
  EXPECT_EQ(EngramNormalize("THE "), "the");
  EXPECT_EQ(EngramNormalize("Hello, World!"), "hello, world!");
  EXPECT_EQ(EngramNormalize(""), "");
  EXPECT_EQ(EngramNormalize("123_abc"), "123_abc");
}

TEST(EngramNormalizeTest, AccentsAreStripped) {
  EXPECT_EQ(EngramNormalize("Héllò"), "hello");        // precomposed é, ò
  EXPECT_EQ(EngramNormalize("He\u0301llo"), "hello");  // e + combining acute
  EXPECT_EQ(EngramNormalize("Zürich"), "zurich");
  EXPECT_EQ(EngramNormalize("x\u0300\u0323"), "x");  // marks on a letter without a precomposed form
  EXPECT_EQ(EngramNormalize("\u212B"), "a");         // ANGSTROM SIGN → Å → A + ring
  EXPECT_EQ(EngramNormalize("\u1E9B\u0323"), "s");   // long s with dot above + dot below
  EXPECT_EQ(EngramNormalize("Ǆ"), "dz");             // U+01C4: NFKC "DŽ", caron dropped
  EXPECT_EQ(EngramNormalize("ñ"), "n");
}

// HF's StripAccents drops every General_Category=Mark character (Mn, Mc and Me), as
// unicode-normalization's is_combining_mark does, not only the non-spacing ones.
TEST(EngramNormalizeTest, StripAccentsDropsSpacingAndEnclosingMarks) {
  EXPECT_EQ(EngramNormalize("\u0915\u093E"), "\u0915");  // DEVANAGARI KA + VOWEL SIGN AA (Mc)
  EXPECT_EQ(EngramNormalize("a\u20DD"), "a");            // COMBINING ENCLOSING CIRCLE (Me)
  EXPECT_EQ(EngramNormalize("\u0301"), "");              // a lone mark leaves nothing
}

TEST(EngramNormalizeTest, CompatibilityForms) {
  EXPECT_EQ(EngramNormalize("\uFB01ne"), "fine");  // LATIN SMALL LIGATURE FI
  EXPECT_EQ(EngramNormalize("\uFB03"), "ffi");
  EXPECT_EQ(EngramNormalize("ＴＨＥ　ＣＡＴ１２"), "the cat12");  // full-width, ideographic space
  EXPECT_EQ(EngramNormalize("\u216B"), "xii");                    // ROMAN NUMERAL TWELVE
  EXPECT_EQ(EngramNormalize("\u2460"), "1");                      // CIRCLED DIGIT ONE
  EXPECT_EQ(EngramNormalize("x\u00B2"), "x2");                    // SUPERSCRIPT TWO
  EXPECT_EQ(EngramNormalize("\u00C5ngstr\u00F6m"), "angstrom");
  EXPECT_EQ(EngramNormalize("ｶ"), "カ");  // half-width katakana
}

TEST(EngramNormalizeTest, UnaffectedScripts) {
  EXPECT_EQ(EngramNormalize("深度求索"), "深度求索");
  EXPECT_EQ(EngramNormalize("😀"), "😀");
  EXPECT_EQ(EngramNormalize("ß"), "ß");       // lowercasing does not fold
  EXPECT_EQ(EngramNormalize("\u1E9E"), "ß");  // CAPITAL SHARP S
  EXPECT_EQ(EngramNormalize("Привет"), "привет");
  // Hangul syllables decompose to conjoining jamo under NFD and stay decomposed.
  EXPECT_EQ(EngramNormalize("한"), "\u1112\u1161\u11AB");
}

TEST(EngramNormalizeTest, WhitespaceRunsCollapse) {
  EXPECT_EQ(EngramNormalize("a\t\tb"), "a b");
  EXPECT_EQ(EngramNormalize("a\r\nb"), "a b");
  EXPECT_EQ(EngramNormalize("a \n \t b"), "a b");
  EXPECT_EQ(EngramNormalize("\n\nfoo  bar\n"), "foo bar");
  // NFKC turns NBSP and the ideographic space into U+0020 before the run is collapsed.
  EXPECT_EQ(EngramNormalize("a\u00A0\u3000b"), "a b");
  // Other White_Space characters are no run members but are stripped at the ends.
  EXPECT_EQ(EngramNormalize("a\u2028b"), "a\u2028b");
  EXPECT_EQ(EngramNormalize("\u2028a\u0085"), "a");
  EXPECT_EQ(EngramNormalize("\va\f"), "a");
  // U+FEFF is no White_Space: Strip keeps it (JavaScript's trim() would not).
  EXPECT_EQ(EngramNormalize("\uFEFFa"), "\uFEFFa");
}

// A text that is one run of [ \t\r\n] becomes a single space that survives Strip.
TEST(EngramNormalizeTest, SpaceOnlyTextsKeepOneSpace) {
  EXPECT_EQ(EngramNormalize(" "), " ");
  EXPECT_EQ(EngramNormalize("   "), " ");
  EXPECT_EQ(EngramNormalize("\t"), " ");
  EXPECT_EQ(EngramNormalize("\n\n"), " ");
  EXPECT_EQ(EngramNormalize(" \r\n\t "), " ");
  EXPECT_EQ(EngramNormalize("\u00A0"), " ");  // NFKC: U+0020
  EXPECT_EQ(EngramNormalize("\u3000\u3000"), " ");
  // Whitespace that is not in the run class is stripped to nothing.
  EXPECT_EQ(EngramNormalize("\u2028"), "");
  EXPECT_EQ(EngramNormalize("\v"), "");
  EXPECT_EQ(EngramNormalize(" \v"), "");  // " \v" is not exactly one space
  EXPECT_EQ(EngramNormalize("\u0085"), "");
}

// The final Replace turns every U+E000 into a space, also one the text brought along.
TEST(EngramNormalizeTest, PrivateUseSentinelInTextBecomesASpace) {
  EXPECT_EQ(EngramNormalize("a\uE000b"), "a b");
  EXPECT_EQ(EngramNormalize("\uE000"), " ");
  EXPECT_EQ(EngramNormalize("\uE000a"), " a");  // replaced after Strip
}

// Lowercase maps each character alone (Rust's char::to_lowercase): no final sigma.
TEST(EngramNormalizeTest, GreekSigmaIsNeverFinal) {
  EXPECT_EQ(EngramNormalize("ΣΟΦΟΣ"), "σοφοσ");
  EXPECT_EQ(EngramNormalize("Σ"), "σ");
  EXPECT_EQ(EngramNormalize("ς"), "ς");                // already lowercase: kept
  EXPECT_EQ(EngramNormalize("ΆΝΘΡΩΠΟΣ"), "ανθρωποσ");  // tonos stripped
  EXPECT_EQ(EngramNormalize("ὈΔΥΣΣΕΎΣ"), "οδυσσευσ");
}

TEST(EngramNormalizeTest, TurkishDottedAndDotlessI) {
  // U+0130 decomposes to I + U+0307 under NFD; the dot is stripped before lowercasing.
  EXPECT_EQ(EngramNormalize("İstanbul"), "istanbul");
  EXPECT_EQ(EngramNormalize("\u0130"), "i");
  EXPECT_EQ(EngramNormalize("ı"), "ı");  // dotless i stays
  EXPECT_EQ(EngramNormalize("I"), "i");  // no Turkish locale rule
  EXPECT_EQ(EngramNormalize("IĞDIR"), "igdir");
}

TEST(EngramNormalizeTest, InvalidUtf8BecomesReplacementCharacters) {
  EXPECT_EQ(EngramNormalize("a\xFF"), "a\uFFFD");
  EXPECT_EQ(EngramNormalize("\xE4\xB8"), "\uFFFD");  // one maximal ill-formed subpart
}

int64_t ConfigCompressedVocab(const std::string& preset) {
  std::ifstream in(Preset(preset) + "/config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  const nlohmann::json& text = config.contains("text_config") ? config["text_config"] : config;
  return text.at("engram_compressed_vocab_size").get<int64_t>();
}

class EngramTokenMapTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngramTokenMapTest, MatchesThePresetAndMergesCaseVariants) {
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::Load(Preset(GetParam()) + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const EngramTokenMap map = BuildEngramTokenMap(*tokenizer);
  ASSERT_EQ(map.compressed.size(), static_cast<size_t>(tokenizer->vocab_size()));
  EXPECT_EQ(map.size, ConfigCompressedVocab(GetParam()));

  // New ids in order of first appearance: each id is at most one past all before it.
  int64_t next = 0;
  for (size_t id = 0; id < map.compressed.size(); ++id) {
    ASSERT_LE(map.compressed[id], next) << id;
    if (map.compressed[id] == next) ++next;
  }
  EXPECT_EQ(next, map.size);
  // The specials are distinct and come first, so the pad id maps to itself.
  EXPECT_EQ(map.compressed[0], 0);
  EXPECT_EQ(map.compressed[1], 1);
  EXPECT_EQ(map.compressed[2], 2);

  auto comp = [&](const std::string& token) -> std::optional<int64_t> {
    const std::optional<int> id = tokenizer->TokenId(token);
    if (!id) return std::nullopt;
    return map.compressed[*id];
  };
  const std::vector<std::string> words = {"the", "and", "of", "to", "in", "is", "that", "for"};
  std::set<int64_t> word_ids;
  for (const std::string& w : words) {
    std::string upper = w, title = w;
    for (char& c : upper) c = static_cast<char>(c - 'a' + 'A');
    title[0] = upper[0];
    std::optional<int64_t> id;
    int present = 0;
    for (const std::string& variant : {w, title, upper, "Ġ" + w, "Ġ" + title, "Ġ" + upper}) {
      const std::optional<int64_t> c = comp(variant);
      if (!c) continue;
      ++present;
      if (!id) id = c;
      EXPECT_EQ(*c, *id) << GetParam() << ": \"" << variant << "\" vs \"" << w << "\"";
    }
    if (id) {
      EXPECT_TRUE(word_ids.insert(*id).second) << GetParam() << ": " << w;
    }
    if (w == "the") {
      EXPECT_GE(present, 3) << GetParam() << ": too few forms of \"the\"";
    }
  }
  EXPECT_GE(word_ids.size(), 4u) << GetParam();

  // A lone space keeps its own id, distinct from the empty-normalising whitespace tokens.
  const std::optional<int64_t> space = comp("Ġ");
  ASSERT_TRUE(space.has_value());
  const std::optional<int64_t> newline = comp("Ċ");
  const std::optional<int64_t> tab = comp("ĉ");
  if (newline) {
    EXPECT_EQ(*newline, *space);  // "\n" → " " too
  }
  if (tab) {
    EXPECT_EQ(*tab, *space);
  }

  // Byte tokens that are no whole UTF-8 character are keyed by their raw token string, so
  // distinct bytes stay distinct.
  std::set<int64_t> partial;
  int partial_tokens = 0;
  for (int id = 0; id < tokenizer->vocab_size(); ++id) {
    const int ids[] = {id};
    if (tokenizer->Decode(ids).find("\uFFFD") == std::string::npos) continue;
    ++partial_tokens;
    partial.insert(map.compressed[id]);
  }
  EXPECT_GT(partial_tokens, 0);
  EXPECT_EQ(partial.size(), static_cast<size_t>(partial_tokens));
}

INSTANTIATE_TEST_SUITE_P(Presets, EngramTokenMapTest,
                         ::testing::Values("v41-tiny", "v41-mini", "v41-kjv"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

// ---------------------------------------------------------------------------------------
// Parity with @huggingface/tokenizers (JS). Its normalizer differs from the Rust crate's in
// two steps, which tokenizer_parity.mjs replaces by the Rust semantics (its "rust" results);
// the library's own results are compared only to count where those two steps matter.

using ::dsv4::testing::JsParityUnavailable;
using ::dsv4::testing::kEngramNormalizerJson;
using ::dsv4::testing::ParityTexts;
using ::dsv4::testing::RunJsParity;
using ::dsv4::testing::TempDir;
using ::dsv4::testing::WriteFile;

// Code points this ICU knows: Node's newer Unicode would differ on characters assigned
// since, which says nothing about the code.
bool AssignedHere(uint32_t cp) { return u_charType(static_cast<UChar32>(cp)) != U_UNASSIGNED; }

TEST(EngramParityTest, NormalizeMatchesTheJsNormalizerOnGeneratedTexts) {
  if (const auto why = JsParityUnavailable()) GTEST_SKIP() << *why;
  TempDir dir("dsv4-engram-parity");
  const std::vector<std::string> texts = ParityTexts(4000, 20261204, AssignedHere);
  WriteFile(dir.path() + "/texts.json", nlohmann::json(texts).dump());
  WriteFile(dir.path() + "/normalizer.json", kEngramNormalizerJson);
  const nlohmann::json js = RunJsParity("normalize", dir.path() + "/normalizer.json",
                                        dir.path() + "/texts.json", dir.path() + "/out.json");
  ASSERT_FALSE(js.is_null());
  const auto rust = js.at("rust").get<std::vector<std::string>>();
  const auto library = js.at("library").get<std::vector<std::string>>();
  ASSERT_EQ(rust.size(), texts.size());
  int mismatches = 0, library_differs = 0, changed = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string ours = EngramNormalize(texts[i]);
    changed += ours != texts[i];
    library_differs += library[i] != ours;
    if (ours != rust[i] && ++mismatches <= 10) {
      ADD_FAILURE() << "text " << i << " " << nlohmann::json(texts[i]).dump()
                    << "\n  C++: " << nlohmann::json(ours).dump()
                    << "\n  JS:  " << nlohmann::json(rust[i]).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(changed, 3000);  // the texts do exercise the normalizer
  std::cout << "normalize parity: " << texts.size() << " texts, " << mismatches
            << " mismatches; the unmodified JS library (final sigma, JS trim) differs on "
            << library_differs << "\n";
}

class EngramMapParityTest : public ::testing::TestWithParam<std::string> {};

// Every id's raw decode, and the whole map, against build_compressed_token_map written
// again in JS on the library's decode and normalizer.
TEST_P(EngramMapParityTest, DecodeAndMapMatchTheJsReimplementation) {
  if (const auto why = JsParityUnavailable()) GTEST_SKIP() << *why;
  TempDir dir("dsv4-engram-parity");
  const std::string path = Preset(GetParam()) + "/tokenizer.json";
  WriteFile(dir.path() + "/normalizer.json", kEngramNormalizerJson);
  const nlohmann::json js =
      RunJsParity("token-map", path, dir.path() + "/normalizer.json", dir.path() + "/out.json");
  ASSERT_FALSE(js.is_null());
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::Load(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  const auto decoded = js.at("decoded").get<std::vector<std::string>>();
  ASSERT_EQ(decoded.size(), static_cast<size_t>(tokenizer->vocab_size()));
  int decode_mismatches = 0;
  for (int id = 0; id < tokenizer->vocab_size(); ++id) {
    const int ids[] = {id};
    const std::string ours = tokenizer->Decode(ids, /*skip_special_tokens=*/false);
    if (ours != decoded[id] && ++decode_mismatches <= 10) {
      ADD_FAILURE() << "id " << id << " (" << tokenizer->TokenString(id) << "): C++ "
                    << nlohmann::json(ours).dump() << ", JS " << nlohmann::json(decoded[id]).dump();
    }
  }
  EXPECT_EQ(decode_mismatches, 0);

  const EngramTokenMap map = BuildEngramTokenMap(*tokenizer);
  EXPECT_EQ(map.size, js.at("size").get<int64_t>());
  const auto compressed = js.at("compressed").get<std::vector<int64_t>>();
  ASSERT_EQ(map.compressed.size(), compressed.size());
  for (size_t id = 0; id < compressed.size(); ++id) {
    ASSERT_EQ(map.compressed[id], compressed[id])
        << "first difference at id " << id << " (" << tokenizer->TokenString(id) << ")";
  }
  std::cout << GetParam() << ": " << decoded.size() << " ids, " << decode_mismatches
            << " decode mismatches, map size C++ " << map.size << ", JS " << js.at("size")
            << " (unmodified JS library " << js.at("library_size") << ")\n";
}

INSTANTIATE_TEST_SUITE_P(Presets, EngramMapParityTest,
                         ::testing::Values("v41-tiny", "v41-mini", "v41-kjv"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

}  // namespace
}  // namespace dsv4
