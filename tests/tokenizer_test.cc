// The byte-level BPE tokenizer: hand-checked merges and splits on small tokenizers written
// here, round trips and DeepSeek's splitting rules on the shipped preset tokenizers, the
// streaming decoder's UTF-8 guarantee, and load errors that name the file.
#include "core/tokenizer.h"

#include <unicode/uchar.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tests/tokenizer_parity.h"

namespace dsv4 {
namespace {

using ::dsv4::testing::ReadFile;
using ::dsv4::testing::WriteFile;

using ::dsv4::testing::Dsv4;
using ::dsv4::testing::RunCommand;
using ::dsv4::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Preset(const std::string& name) {
  return std::string(DSV4_SOURCE_DIR) + "/models/" + name;
}

// Written independently of the tokenizer's own UTF-8 code: the standard's well-formed
// byte sequences (Unicode Table 3-7).
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = [&](size_t k) { return static_cast<unsigned>(static_cast<uint8_t>(s[k])); };
    const unsigned c = b(i);
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c <= 0x7F) {
      n = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const unsigned lower = k == 1 ? lo : 0x80, upper = k == 1 ? hi : 0xBF;
      if (b(i + k) < lower || b(i + k) > upper) return false;
    }
    i += n;
  }
  return true;
}

// GPT-2's byte-to-character map (HF's ByteLevel alphabet), written out independently.
std::string ByteLevelChar(int b) {
  const auto printable = [](int c) {
    return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  int cp = b;
  if (!printable(b)) {
    cp = 256;
    for (int k = 0; k < b; ++k) cp += printable(k) ? 0 : 1;
  }
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  return {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
}

// Gives every byte the vocabulary lacks a token, with ids after all others: a byte-level
// tokenizer must be able to spell any byte.
std::string WithAllBytes(const std::string& json_text) {
  nlohmann::json j = nlohmann::json::parse(json_text);
  nlohmann::json& vocab = j["model"]["vocab"];
  int next = 0;
  for (const auto& [token, id] : vocab.items()) next = std::max(next, id.get<int>() + 1);
  for (const auto& added : j.value("added_tokens", nlohmann::json::array()))
    next = std::max(next, added["id"].get<int>() + 1);
  for (int b = 0; b < 256; ++b)
    if (!vocab.contains(ByteLevelChar(b))) vocab[ByteLevelChar(b)] = next++;
  return j.dump();
}

// Byte offsets in the text where one token ends and the next begins.
std::vector<size_t> Boundaries(const Tokenizer& t, const std::vector<int>& ids) {
  std::vector<size_t> out;
  size_t offset = 0;
  for (int id : ids) {
    offset += t.TokenBytes(id).size();
    out.push_back(offset);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// A hand-written tokenizer whose encodings are worked out by hand.
//
// Byte-level alphabet: a space is "Ġ". Merges by rank:
//   0 "a b" -> ab(9)   1 "Ġ ab" -> Ġab(11)   2 "ab c" -> abc(10)   3 "c d" -> cd(12)
//   4 "1 2" -> 12(13)
// Pre-tokenizer: Split "[0-9]{1,2}| ?[a-z]+" (Isolated), then ByteLevel. BOS <s> = 0. The
// other 248 bytes get ids 15.. (WithAllBytes).
constexpr char kHandTokenizer[] = R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": true, "special": true},
    {"id": 14, "content": "<tag>", "special": false}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "[0-9]{1,2}| ?[a-z]+"}, "behavior": "Isolated",
     "invert": false},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
  ]},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
    "byte_fallback": false,
    "vocab": {"a": 1, "b": 2, "c": 3, "d": 4, "Ġ": 5, "1": 6, "2": 7, "3": 8,
              "ab": 9, "abc": 10, "Ġab": 11, "cd": 12, "12": 13},
    "merges": MERGES}
})";

Tokenizer HandTokenizer(const std::string& merges) {
  absl::StatusOr<Tokenizer> t = Tokenizer::Parse(
      WithAllBytes(absl::StrReplaceAll(kHandTokenizer, {{"MERGES", merges}})), "hand.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

class HandTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HandTokenizerTest, MergesFollowRankOrder) {
  const Tokenizer t = HandTokenizer(GetParam());
  // a b c d: "a b" (rank 0) first, then "ab c" (2) beats "c d" (3), which is then stale.
  EXPECT_THAT(t.Encode("abcd", false), ElementsAre(10, 4));
  // Ġ a b: "a b" then "Ġ ab".
  EXPECT_THAT(t.Encode(" ab", false), ElementsAre(11));
  // Ġ ab c: "Ġ ab" (1) beats "ab c" (2), so the c stays alone.
  EXPECT_THAT(t.Encode(" abc", false), ElementsAre(11, 3));
  // The split isolates "abcd" from " ab"; no merge crosses pieces.
  EXPECT_THAT(t.Encode("abcd ab", false), ElementsAre(10, 4, 11));
  EXPECT_THAT(t.Encode("dd", false), ElementsAre(4, 4));
  EXPECT_THAT(t.Encode("", false), ElementsAre());
}

TEST_P(HandTokenizerTest, DigitsSplitInPairsByTheRegex) {
  const Tokenizer t = HandTokenizer(GetParam());
  EXPECT_THAT(t.Encode("123", false), ElementsAre(13, 8));
  EXPECT_THAT(t.Encode("1212", false), ElementsAre(13, 13));
}

TEST_P(HandTokenizerTest, AddedTokensAndTemplate) {
  const Tokenizer t = HandTokenizer(GetParam());
  EXPECT_THAT(t.Encode("<s>ab<tag>c", false), ElementsAre(0, 9, 14, 3));
  EXPECT_THAT(t.Encode("ab", true), ElementsAre(0, 9));
  EXPECT_THAT(t.Encode("<s", false), ElementsAre(*t.TokenId("<"), *t.TokenId("s")));
  EXPECT_EQ(t.Decode({0, 11, 3, 14}), "<s> abc<tag>");
  EXPECT_EQ(t.Decode({0, 11, 3, 14}, /*skip_special_tokens=*/true), " abc<tag>");
  EXPECT_EQ(t.vocab_size(), 15 + 248);
  EXPECT_EQ(t.TokenId("Ġab"), 11);
  EXPECT_EQ(t.TokenString(11), "Ġab");
  EXPECT_EQ(t.TokenBytes(11), " ab");
  EXPECT_TRUE(t.IsSpecial(0));
  EXPECT_FALSE(t.IsSpecial(14));
  EXPECT_FALSE(t.TokenId("zz").has_value());
  EXPECT_FALSE(t.bos_id().has_value());  // no DeepSeek names, no tokenizer_config.json
}

// HF writes merges either as "a b" strings or, in newer files, as pairs.
INSTANTIATE_TEST_SUITE_P(
    MergeFormats, HandTokenizerTest,
    ::testing::Values(R"(["a b", "Ġ ab", "ab c", "c d", "1 2"])",
                      R"([["a", "b"], ["Ġ", "ab"], ["ab", "c"], ["c", "d"], ["1", "2"]])"));

// Split behaviours on "x-y" / "x--y" with merges "x -" -> x-(3), "- y" -> -y(4),
// "- -" -> --(5): which merges can fire shows where the pieces were cut.
Tokenizer DashTokenizer(const std::string& behavior, bool invert,
                        const std::string& pattern = R"({"String": "-"})") {
  const std::string json = absl::StrCat(
      R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": )",
      pattern, R"(, "behavior": ")", behavior, R"(", "invert": )", invert ? "true" : "false", R"(},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
          "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": {"x": 0, "y": 1, "-": 2, "x-": 3, "-y": 4, "--": 5},
                    "merges": ["x -", "- y", "- -"]}})");
  absl::StatusOr<Tokenizer> t = Tokenizer::Parse(WithAllBytes(json), "dash.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

TEST(TokenizerSplitTest, Behaviors) {
  EXPECT_THAT(DashTokenizer("Isolated", false).Encode("x-y"), ElementsAre(0, 2, 1));
  EXPECT_THAT(DashTokenizer("Removed", false).Encode("x-y"), ElementsAre(0, 1));
  EXPECT_THAT(DashTokenizer("MergedWithPrevious", false).Encode("x-y"), ElementsAre(3, 1));
  EXPECT_THAT(DashTokenizer("MergedWithNext", false).Encode("x-y"), ElementsAre(0, 4));
  EXPECT_THAT(DashTokenizer("Isolated", false).Encode("x--y"), ElementsAre(0, 2, 2, 1));
  EXPECT_THAT(DashTokenizer("Contiguous", false).Encode("x--y"), ElementsAre(0, 5, 1));
  EXPECT_THAT(DashTokenizer("Removed", true).Encode("x-y"), ElementsAre(2));
  // Oniguruma's \uHHHH escape, as HF files may write a code point.
  EXPECT_THAT(DashTokenizer("Removed", false, R"({"Regex": "\\u002D"})").Encode("x-y"),
              ElementsAre(0, 1));
}

TEST(TokenizerSplitTest, NonNormalizedAddedTokensSplitFirst) {
  // HF finds added tokens marked normalized=false before the others, so "-y" wins over the
  // leftmost "x-" in "x-y".
  const std::string json = R"({
    "added_tokens": [{"id": 2, "content": "x-", "normalized": true},
                     {"id": 3, "content": "-y", "normalized": false}],
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"x": 0, "y": 1}, "merges": []}})";
  absl::StatusOr<Tokenizer> t = Tokenizer::Parse(WithAllBytes(json), "added.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->Encode("x-y"), ElementsAre(0, 3));
  EXPECT_THAT(t->Encode("x-x"), ElementsAre(2, 0));
}

// BPE model options: ignore_merges (a word that is a token is taken whole), unk_token
// with and without fuse_unk (bytes missing from the vocabulary).
absl::StatusOr<Tokenizer> ModelTokenizer(const std::string& options) {
  return Tokenizer::Parse(absl::StrCat(R"({
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<unk>": 5},
              "merges": ["a b"], )",
                                       options, "}}"),
                          "options.json");
}

TEST(TokenizerSplitTest, ModelOptions) {
  const auto encode = [](const std::string& options, const std::string& text) {
    absl::StatusOr<Tokenizer> t = ModelTokenizer(options);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->Encode(text) : std::vector<int>{};
  };
  EXPECT_THAT(encode(R"("unk_token": "<unk>")", "abc"), ElementsAre(3, 2));
  EXPECT_THAT(encode(R"("unk_token": "<unk>", "ignore_merges": true)", "abc"), ElementsAre(4));
  EXPECT_THAT(encode(R"("unk_token": "<unk>")", "axxb"), ElementsAre(0, 5, 5, 1));
  EXPECT_THAT(encode(R"("unk_token": "<unk>", "fuse_unk": true)", "axxb"), ElementsAre(0, 5, 1));
  // Without unk_token every byte needs a token, or some text could not be encoded.
  EXPECT_THAT(ModelTokenizer(R"("unk_token": null)").status().message(),
              HasSubstr("options.json: model.vocab has no token for byte 0"));
}

TEST(TokenizerSplitTest, ByteLevelAlone) {
  // ByteLevel with its own GPT-2 regex and a prefix space, as GPT-2 style files have it:
  // "ab ab" -> " ab", " ab" -> Ġab Ġab.
  const std::string json = R"({
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġab": 4},
              "merges": ["a b", "Ġ ab"]}})";
  absl::StatusOr<Tokenizer> t = Tokenizer::Parse(WithAllBytes(json), "gpt2.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->Encode("ab ab"), ElementsAre(4, 4));
}

// ---------------------------------------------------------------------------------------
// The shipped preset tokenizers.

class PresetTokenizerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    absl::StatusOr<Tokenizer> t = Tokenizer::LoadFromDir(Preset(GetParam()));
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::make_unique<Tokenizer>(*std::move(t));
  }
  const Tokenizer& t() const { return *tokenizer_; }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_P(PresetTokenizerTest, MatchesTheModelConfig) {
  const nlohmann::json config =
      nlohmann::json::parse(ReadFile(Preset(GetParam()) + "/config.json"));
  EXPECT_EQ(t().vocab_size(), config["vocab_size"].get<int>());
  EXPECT_EQ(t().bos_id(), config["bos_token_id"].get<int>());
  EXPECT_EQ(t().eos_id(), config["eos_token_id"].get<int>());
  EXPECT_EQ(t().TokenString(*t().bos_id()), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(t().TokenString(*t().eos_id()), "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(t().IsSpecial(*t().eos_id()));
  // Every id has a token, and every byte has a token of its own.
  for (int id = 0; id < t().vocab_size(); ++id) EXPECT_FALSE(t().TokenString(id).empty()) << id;
  for (int b = 0; b < 256; ++b) {
    const std::string byte(1, static_cast<char>(b));
    EXPECT_THAT(t().Encode(byte, false), ::testing::SizeIs(1)) << b;
  }
}

TEST_P(PresetTokenizerTest, RoundTrips) {
  const std::vector<std::string> texts = {
      "Hello, world! The quick brown fox jumps over the lazy dog.",
      "Café, naïve, façade, São Paulo, Zürich, Ærøskøbing, ÀÉÎÕÜ",
      "深度求索发布了新的模型。東京は日本の首都です。カタカナ",
      "Emoji: 😀🚀👨‍👩‍👧 🇫🇷 ❤️ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
      "Numbers: 1234567 3.14159 1e-6 2024-12-26 $1,000,000",
      "Whitespace:   three spaces\n\n\ttab\r\nCRLF   \n  trailing  ",
      "   ",
      "\n",
      "x",
      "Mixed中文and English123数字",
      "code: for (int i = 0; i < n; ++i) { sum += a[i]; }",
  };
  for (const std::string& text : texts) {
    const std::vector<int> ids = t().Encode(text, false);
    EXPECT_EQ(t().Decode(ids), text);
    const std::vector<int> with_bos = t().Encode(text);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], *t().bos_id());
    EXPECT_EQ(std::vector<int>(with_bos.begin() + 1, with_bos.end()), ids);
    EXPECT_EQ(t().Decode(with_bos), "<｜begin▁of▁sentence｜>" + text);
    EXPECT_EQ(t().Decode(with_bos, /*skip_special_tokens=*/true), text);
  }
}

TEST_P(PresetTokenizerTest, CorpusRoundTripsAndCompresses) {
  std::string corpus;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(DSV4_SOURCE_DIR) +
                                                               "/scripts/tokenizer_corpus"))
    corpus += ReadFile(entry.path().string());
  const std::vector<int> ids = t().Encode(corpus, false);
  EXPECT_EQ(t().Decode(ids), corpus);
  EXPECT_LT(ids.size(), corpus.size() / 2);  // merges learned from this text do compress it
}

TEST_P(PresetTokenizerTest, DigitsSplitInGroupsOfThree) {
  // DeepSeek's first Split is \p{N}{1,3}: no token may cross offsets 3 or 6, or join digits
  // to the letters around them.
  const std::vector<int> ids = t().Encode("1234567", false);
  EXPECT_THAT(Boundaries(t(), ids), ::testing::IsSupersetOf({3u, 6u, 7u}));
  const std::vector<int> mixed = t().Encode("abc123def", false);
  EXPECT_THAT(Boundaries(t(), mixed), ::testing::IsSupersetOf({3u, 6u}));
}

TEST_P(PresetTokenizerTest, CjkRunsAndWhitespaceAreIsolated) {
  // "abc" | "中文" (the CJK Split), then the last Split: "a" | "  " | " b" (\s+(?!\S)).
  EXPECT_THAT(Boundaries(t(), t().Encode("abc中文", false)), ::testing::Contains(3u));
  EXPECT_THAT(Boundaries(t(), t().Encode("a   b", false)), ::testing::IsSupersetOf({1u, 3u}));
  // Punctuation followed by letters stays one piece ("[punct][A-Za-z]+"), so ".Net" may merge.
  EXPECT_EQ(t().Decode(t().Encode(".Net", false)), ".Net");
}

TEST_P(PresetTokenizerTest, SpecialTokensInText) {
  const int eos = *t().eos_id();
  const int think = *t().TokenId("<think>");
  const std::string text = "Hi<｜end▁of▁sentence｜>there<think>x</think>";
  const std::vector<int> ids = t().Encode(text, false);
  EXPECT_THAT(ids, ::testing::Contains(eos));
  EXPECT_THAT(ids, ::testing::Contains(think));
  EXPECT_EQ(t().Decode(ids), text);
  // <think> is an added token but not special: skipping specials keeps it.
  EXPECT_EQ(t().Decode(ids, /*skip_special_tokens=*/true), "Hithere<think>x</think>");
  // A prefix of a special token is ordinary text.
  EXPECT_THAT(t().Encode("<｜end▁of", false), ::testing::Not(::testing::Contains(eos)));
}

TEST_P(PresetTokenizerTest, ArbitraryBytesRoundTripExactly) {
  std::mt19937 rng(7);
  const std::vector<std::string> pieces = {
      "a",  "Z", " ",        "  ",   "\n",   "7",    "42",         ".",       "é",
      "中", "😀", "\xF0\x9F", "\x80", "\xFF", "\xC3", "<｜User｜>", "<think>", "\t"};
  for (int round = 0; round < 300; ++round) {
    std::string text;
    const int n = std::uniform_int_distribution<int>(0, 24)(rng);
    for (int i = 0; i < n; ++i)
      text += pieces[std::uniform_int_distribution<size_t>(0, pieces.size() - 1)(rng)];
    const std::vector<int> ids = t().Encode(text, false);
    std::string bytes;
    for (int id : ids) absl::StrAppend(&bytes, t().TokenBytes(id));
    ASSERT_EQ(bytes, text);
    const std::string decoded = t().Decode(ids);
    EXPECT_TRUE(IsValidUtf8(decoded));
    if (IsValidUtf8(text)) {
      EXPECT_EQ(decoded, text);
    }

    StreamingDecoder stream(t());
    std::string streamed;
    for (int id : ids) {
      const std::string piece = stream.Push(id);
      ASSERT_TRUE(IsValidUtf8(piece)) << round;
      streamed += piece;
    }
    streamed += stream.Flush();
    EXPECT_EQ(streamed, decoded) << round;
  }
}

TEST_P(PresetTokenizerTest, EncodeIsThreadSafe) {
  const std::string text = "Concurrent requests share one tokenizer: 深度求索 123456 😀";
  const std::vector<int> expected = t().Encode(text);
  std::vector<std::thread> threads;
  std::vector<int> same(4, 0);  // not vector<bool>: threads write neighbouring elements
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      bool ok = true;
      for (int k = 0; k < 200; ++k) ok = ok && t().Encode(text) == expected;
      same[i] = ok;
    });
  }
  for (std::thread& th : threads) th.join();
  for (int s : same) EXPECT_TRUE(s);
}

INSTANTIATE_TEST_SUITE_P(Presets, PresetTokenizerTest, ::testing::Values("v4-tiny", "v4-mini"));

TEST(TokenizerTest, MiniSpellsEveryThreeDigitGroupAsOneToken) {
  absl::StatusOr<Tokenizer> t = Tokenizer::Load(Preset("v4-mini") + "/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->Encode("1234567", false),
              ElementsAre(*t->TokenId("123"), *t->TokenId("456"), *t->TokenId("7")));
}

// ---------------------------------------------------------------------------------------
// Streaming

class StreamingDecoderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // v4-tiny has few merges, so multi-byte characters arrive split across tokens.
    absl::StatusOr<Tokenizer> t = Tokenizer::LoadFromDir(Preset("v4-tiny"));
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::make_unique<Tokenizer>(*std::move(t));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(StreamingDecoderTest, HoldsBackUnfinishedCharacters) {
  const std::string text = "深度求索 Zürich 😀👍🏽 ok";
  const std::vector<int> ids = tokenizer_->Encode(text, false);
  StreamingDecoder stream(*tokenizer_);
  std::string streamed;
  int held = 0;
  for (int id : ids) {
    const std::string piece = stream.Push(id);
    ASSERT_TRUE(IsValidUtf8(piece));
    if (piece.empty()) ++held;
    streamed += piece;
  }
  EXPECT_GT(held, 0);  // some token did end inside a character
  EXPECT_EQ(stream.Flush(), "");
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(streamed, tokenizer_->Decode(ids));
}

TEST_F(StreamingDecoderTest, FinishesBrokenSequencesLikeDecode) {
  const Tokenizer& t = *tokenizer_;
  const int c3 = *t.TokenId("Ã");  // byte 0xC3: the first half of "é"
  const int a9 = *t.TokenId("©");  // byte 0xA9: its second half
  const int ff = *t.TokenId("ÿ");  // byte 0xFF: never valid UTF-8
  StreamingDecoder stream(t);
  EXPECT_EQ(stream.Push(c3), "");
  EXPECT_EQ(stream.Push(a9), "é");
  EXPECT_EQ(stream.Push(ff), "\uFFFD");  // nothing can complete it: emitted at once
  EXPECT_EQ(stream.Push(c3), "");
  EXPECT_EQ(stream.Flush(), "\uFFFD");  // the stream ended inside a character
  EXPECT_EQ(t.Decode({c3, a9, ff, c3}), "é\uFFFD\uFFFD");
  // An unfinished character interrupted by an ASCII token.
  EXPECT_EQ(stream.Push(c3), "");
  EXPECT_EQ(stream.Push(*t.TokenId("a")), "\uFFFDa");
}

TEST_F(StreamingDecoderTest, SkipsSpecialTokensWhenAsked) {
  StreamingDecoder stream(*tokenizer_, /*skip_special_tokens=*/true);
  EXPECT_EQ(stream.Push(*tokenizer_->eos_id()), "");
  StreamingDecoder keep(*tokenizer_);
  EXPECT_EQ(keep.Push(*tokenizer_->eos_id()), "<｜end▁of▁sentence｜>");
}

// ---------------------------------------------------------------------------------------
// Loading

TEST(TokenizerLoadTest, ErrorsNameTheFile) {
  TempDir dir("dsv4-tok");
  const auto load_text = [&](const std::string& name, const std::string& text) {
    const std::string path = dir.path() + "/" + name;
    WriteFile(path, text);
    return Tokenizer::Load(path).status();
  };
  const std::string pre =
      R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
         "decoder": {"type": "ByteLevel"})";

  absl::Status s = load_text("malformed.json", R"({"model": {"type": "BPE", )");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("malformed.json: malformed JSON"));

  s = load_text("wordpiece.json",
                absl::StrCat("{", pre, R"(, "model": {"type": "WordPiece", "vocab": {}}})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("wordpiece.json: unknown model type 'WordPiece'"));

  s = load_text("merge.json", absl::StrCat("{", pre, R"(, "model": {"type": "BPE",
                "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b", "ab q"]}})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("merge.json: model.merges[1]"));
  EXPECT_THAT(s.message(), HasSubstr("unknown token \"q\""));

  s = load_text("result.json", absl::StrCat("{", pre, R"(, "model": {"type": "BPE",
                "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})"));
  EXPECT_THAT(s.message(), HasSubstr("result.json: model.merges[0] (\"a b\") refers to unknown "
                                     "token \"ab\""));

  s = load_text("regex.json", R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"},
                {"type": "ByteLevel"}]}, "decoder": {"type": "ByteLevel"},
                "model": {"type": "BPE", "vocab": {}, "merges": []}})");
  EXPECT_THAT(s.message(), HasSubstr("regex.json: pre_tokenizer.pretokenizers[0].pattern: bad "
                                     "regex"));

  s = load_text("ids.json", absl::StrCat("{", pre, R"(, "model": {"type": "BPE",
                "vocab": {"a": 0, "b": 0}, "merges": []}})"));
  EXPECT_THAT(s.message(), HasSubstr("ids.json: model.vocab: id 0 is given to both"));

  s = load_text("nfc.json",
                absl::StrCat(R"({"normalizer": {"type": "NFC"}, )", pre,
                             R"(, "model": {"type": "BPE", "vocab": {}, "merges": []}})"));
  EXPECT_THAT(s.message(), HasSubstr("nfc.json: a normalizer is not supported"));

  s = load_text("types.json", absl::StrCat("{", pre, R"(, "model": {"type": "BPE",
                "vocab": {"a": "zero"}, "merges": []}})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("types.json"));

  s = Tokenizer::Load(dir.path() + "/missing.json").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("missing.json"));
}

TEST(TokenizerLoadTest, TokenizerConfigSetsBosAndEos) {
  TempDir dir("dsv4-tok");
  std::filesystem::copy_file(Preset("v4-tiny") + "/tokenizer.json", dir.path() + "/tokenizer.json");
  WriteFile(dir.path() + "/tokenizer_config.json",
            R"({"bos_token": {"__type": "AddedToken", "content": "<｜User｜>"},
                "eos_token": "<｜Assistant｜>"})");
  absl::StatusOr<Tokenizer> t = Tokenizer::LoadFromDir(dir.path());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->bos_id(), t->TokenId("<｜User｜>"));
  EXPECT_EQ(t->eos_id(), t->TokenId("<｜Assistant｜>"));

  WriteFile(dir.path() + "/tokenizer_config.json", R"({"eos_token": "<nope>"})");
  EXPECT_THAT(Tokenizer::LoadFromDir(dir.path()).status().message(),
              HasSubstr("tokenizer_config.json: eos_token \"<nope>\" is not a token"));
}

TEST(TokenizerLoadTest, CheckpointGenerateShipsTheTokenizer) {
  TempDir dir("dsv4-tok");
  const auto r = RunCommand(Dsv4() + " checkpoint generate --preset v4-tiny --seed 1 --out " +
                            dir.path() + "/ckpt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadFile(dir.path() + "/ckpt/tokenizer.json"),
            ReadFile(Preset("v4-tiny") + "/tokenizer.json"));
  absl::StatusOr<Tokenizer> t = Tokenizer::LoadFromDir(dir.path() + "/ckpt");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 1024);
}

// The shipped files are exactly what scripts/make_tokenizer.py writes from its corpus.
TEST(TokenizerLoadTest, ShippedTokenizersAreReproducible) {
  TempDir dir("dsv4-tok");
  for (const std::string preset : {"v4-tiny", "v4-mini"}) {
    const auto r = RunCommand("python3 scripts/make_tokenizer.py --config models/" + preset +
                              "/config.json --out " + dir.path() + "/" + preset + ".json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(ReadFile(dir.path() + "/" + preset + ".json") ==
                ReadFile(Preset(preset) + "/tokenizer.json"))
        << "models/" << preset << "/tokenizer.json is stale: rerun scripts/make_tokenizer.py";
  }
}

// The shipped tokenizers encode generated text exactly as Hugging Face's JS implementation
// of tokenizer.json does (tests/tokenizer_parity.mjs; the Python `tokenizers` package is not
// installable here). Skips only where node is missing outside CI.
TEST(TokenizerLoadTest, MatchesHuggingFaceJsTokenizer) {
  if (const auto why = ::dsv4::testing::JsParityUnavailable()) GTEST_SKIP() << *why;
  TempDir dir("dsv4-tok");
  // Code points this machine's ICU knows (Node's newer Unicode data would differ on later
  // characters' classes, which says nothing about the tokenizer).
  std::vector<std::string> texts = ::dsv4::testing::ParityTexts(
      3000, 4242, [](uint32_t cp) { return u_charType(static_cast<UChar32>(cp)) != U_UNASSIGNED; });
  texts.insert(texts.end(),
               {"Hello, world! 1234567", "深度求索 Zürich 😀", "a   b\n\n\tc <think>x</think>", "",
                " ", "<｜User｜>hi<｜Assistant｜>"});
  WriteFile(dir.path() + "/texts.json", nlohmann::json(texts).dump());
  for (const std::string preset : {"v41-mini", "v4-mini"}) {
    const std::string path = Preset(preset) + "/tokenizer.json";
    const nlohmann::json js = ::dsv4::testing::RunJsParity(
        "encode", path, dir.path() + "/texts.json", dir.path() + "/" + preset + ".json");
    ASSERT_FALSE(js.is_null());
    const auto expected = js.get<std::vector<std::vector<int>>>();
    ASSERT_EQ(expected.size(), texts.size());
    absl::StatusOr<Tokenizer> t = Tokenizer::Load(path);
    ASSERT_TRUE(t.ok()) << t.status();
    int mismatches = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      if (t->Encode(texts[i]) != expected[i] && ++mismatches <= 10) {
        ADD_FAILURE() << preset << " text " << i << " " << nlohmann::json(texts[i]).dump()
                      << "\n  C++: " << nlohmann::json(t->Encode(texts[i])).dump()
                      << "\n  JS:  " << nlohmann::json(expected[i]).dump();
      }
    }
    EXPECT_EQ(mismatches, 0) << preset;
    std::cout << preset << " encode parity: " << texts.size() << " texts, " << mismatches
              << " mismatches\n";
  }
}

}  // namespace
}  // namespace dsv4
