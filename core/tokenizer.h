// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, in the form DeepSeek
// V3/V4 ship: no normalizer; a pre_tokenizer that is a Sequence of regex Splits (PCRE-style
// patterns with \p{..} classes and lookaheads, run through PCRE2) ending in ByteLevel; a BPE
// model (merges as "a b" strings or ["a", "b"] pairs); a ByteLevel decoder; added tokens
// (special or not); and a TemplateProcessing post-processor that prepends BOS.
//
// Contract:
// - Encode matches Hugging Face `tokenizers` for what it supports: added tokens in the text
//   are found first (leftmost-longest) and always become their ids; the rest is split by the
//   pre-tokenizer and BPE-merged (lowest merge rank first, leftmost on ties). Any byte string
//   is accepted; bytes that are not valid UTF-8 match no regex class and still encode.
// - Decode concatenates the tokens' bytes and replaces invalid UTF-8 with U+FFFD as Rust's
//   String::from_utf8_lossy does; ids outside the vocabulary are skipped.
// - Unsupported features (a normalizer, lstrip/rstrip/single_word added tokens, BPE
//   dropout, continuing_subword_prefix, byte_fallback, other model, decoder or
//   post-processor types) are load errors naming the file, never silent mis-encodings; so
//   is a vocabulary that lacks a byte's token without an unk_token (HF would fail to encode).
// - Encode, Decode and the accessors are thread-safe (the word cache is locked).
#ifndef DSV4_CORE_TOKENIZER_H_
#define DSV4_CORE_TOKENIZER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace dsv4 {

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json; errors name `path`.
  static absl::StatusOr<Tokenizer> Load(const std::string& path);
  // Loads <dir>/tokenizer.json. BOS/EOS come from <dir>/tokenizer_config.json ("bos_token",
  // "eos_token": a string or {"content": ...}) when it exists, otherwise from the DeepSeek
  // names <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜> among the added tokens.
  static absl::StatusOr<Tokenizer> LoadFromDir(const std::string& dir);
  // Parses tokenizer.json text; `source` names it in errors.
  static absl::StatusOr<Tokenizer> Parse(absl::string_view json_text, const std::string& source);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text`. With `add_special_tokens` the post-processor's template is applied
  // (DeepSeek: BOS first), as HF's add_special_tokens=True.
  std::vector<int> Encode(absl::string_view text, bool add_special_tokens = true) const;
  // Text of `ids`; special added tokens are dropped when `skip_special_tokens`.
  std::string Decode(absl::Span<const int> ids, bool skip_special_tokens = false) const;

  // One past the largest id of the model vocabulary and the added tokens.
  int vocab_size() const;
  // The id of a token, given as it is written in tokenizer.json (added token content, or a
  // byte-level vocabulary entry such as "Ġthe").
  std::optional<int> TokenId(absl::string_view token) const;
  // The token as written in tokenizer.json; empty for an id with no token.
  absl::string_view TokenString(int id) const;
  // The bytes the token decodes to (not necessarily whole UTF-8 characters).
  absl::string_view TokenBytes(int id) const;
  bool IsSpecial(int id) const;
  std::optional<int> bos_id() const;
  std::optional<int> eos_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of generated ids into text pieces that are always whole UTF-8: bytes of a
// character split across tokens are held back until the character is complete. Bytes that
// can never complete a character become U+FFFD at once, so the pieces of Push calls followed
// by Flush concatenate to exactly Decode(all ids). The tokenizer must outlive the decoder.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // The text that `id` completes (possibly empty).
  std::string Push(int id);
  // Whatever is held back, with an unfinished character as U+FFFD; resets the decoder.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // an unfinished UTF-8 sequence: at most 3 bytes
};

}  // namespace dsv4

#endif  // DSV4_CORE_TOKENIZER_H_
