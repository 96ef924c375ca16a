// Engram's compressed token map (spec deepseek-v41-model.md §3.1; the official
// build_compressed_token_map): token ids whose text normalises to the same key share one
// compressed id, so "The", " the" and "THE" hash alike.
//
// For every id < tokenizer.vocab_size(), in order:
//   text = the tokenizer's raw decode of [id] (special tokens kept, no clean-up of spaces)
//   key  = the raw token string (Tokenizer::TokenString) if text contains U+FFFD, else
//          Normalize(text), or text itself when that is empty
//   comp[id] = the index of key among the distinct keys in order of first appearance
// Normalize is the tokenizers normalizer sequence NFKC, NFD, StripAccents (drop every
// General_Category=Mark character, Mn, Mc and Me, as the Rust crate's is_combining_mark),
// Lowercase (each character's full lowercase mapping alone, as Rust's char::to_lowercase:
// no final sigma), Replace(/[ \t\r\n]+/ → " "), Replace(/^ $/ → U+E000), Strip (both
// sides, Unicode White_Space), Replace(U+E000 → " "), with the semantics of the Rust
// `tokenizers` crate that the official code runs (ICU provides the Unicode data).
#ifndef DSV4_CORE_ENGRAM_TOKEN_MAP_H_
#define DSV4_CORE_ENGRAM_TOKEN_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tokenizer.h"

namespace dsv4 {

struct EngramTokenMap {
  std::vector<int64_t> compressed;  // comp[id] for id < tokenizer.vocab_size()
  int64_t size = 0;                 // distinct keys = engram_compressed_vocab_size
};

// The normalizer sequence above, on UTF-8 text (invalid bytes read as U+FFFD).
std::string EngramNormalize(absl::string_view text);

EngramTokenMap BuildEngramTokenMap(const Tokenizer& tokenizer);

}  // namespace dsv4

#endif  // DSV4_CORE_ENGRAM_TOKEN_MAP_H_
