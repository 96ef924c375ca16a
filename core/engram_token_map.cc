// ICU (libicu-dev) does the Unicode work: Normalizer2 for NFKC and NFD, the general
// category for StripAccents, full case mapping (u_strToLower) for Lowercase and the
// White_Space property for Strip. utf8proc has only the simple one-to-one lowercase
// mapping, so it would turn U+0130 into "i" where Rust's char::to_lowercase gives
// "i\u0307"; ICU has the full mapping and is already in the base image.
#include "core/engram_token_map.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"

namespace dsv4 {
namespace {

// The sentinel the official code puts in place of a lone space so that Strip keeps it.
constexpr UChar32 kSentinel = 0xE000;

// ICU fails only without its data library or memory: nothing a caller could handle.
void CheckIcu(UErrorCode status, const char* what) {
  if (U_SUCCESS(status)) return;
  std::fprintf(stderr, "EngramNormalize: ICU %s failed: %s\n", what, u_errorName(status));
  std::abort();
}

const icu::Normalizer2& Nfkc() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFKCInstance(status);
  CheckIcu(status, "NFKC data");
  return *n;
}

const icu::Normalizer2& Nfd() {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFDInstance(status);
  CheckIcu(status, "NFD data");
  return *n;
}

icu::UnicodeString Normalized(const icu::Normalizer2& form, const icu::UnicodeString& s) {
  UErrorCode status = U_ZERO_ERROR;
  icu::UnicodeString out = form.normalize(s, status);
  CheckIcu(status, "normalize");
  return out;
}

// Appends the full lowercase mapping of `c` taken alone, as Rust's char::to_lowercase:
// no context (an isolated capital sigma is never final) and no locale rules.
void AppendLowercase(UChar32 c, icu::UnicodeString* out) {
  if (c < 0x80) {
    out->append(static_cast<UChar32>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c));
    return;
  }
  UChar src[2];
  int32_t src_len = 0;
  U16_APPEND_UNSAFE(src, src_len, c);
  UChar dst[8];  // a full mapping has at most 3 code points
  UErrorCode status = U_ZERO_ERROR;
  const int32_t n = u_strToLower(dst, 8, src, src_len, "", &status);
  CheckIcu(status, "u_strToLower");
  out->append(dst, n);
}

bool IsCombiningMark(UChar32 c) { return (U_GET_GC_MASK(c) & U_GC_M_MASK) != 0; }

bool IsTabSpace(UChar32 c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

}  // namespace

std::string EngramNormalize(absl::string_view text) {
  // Invalid UTF-8 (never produced by the decoder for keys, which are valid Rust strings)
  // becomes U+FFFD per maximal ill-formed subsequence.
  const icu::UnicodeString input = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  const icu::UnicodeString nfd = Normalized(Nfd(), Normalized(Nfkc(), input));

  // StripAccents, then Lowercase (the lowercase output is not stripped again), then the
  // whitespace-run Replace, in one pass over the code points.
  icu::UnicodeString s;
  bool in_run = false;
  for (int32_t i = 0; i < nfd.length();) {
    const UChar32 c = nfd.char32At(i);
    i += U16_LENGTH(c);
    if (IsCombiningMark(c)) continue;
    icu::UnicodeString lower;
    AppendLowercase(c, &lower);
    for (int32_t j = 0; j < lower.length();) {
      const UChar32 l = lower.char32At(j);
      j += U16_LENGTH(l);
      if (IsTabSpace(l)) {
        if (!in_run) s.append(static_cast<UChar>(' '));
        in_run = true;
      } else {
        s.append(l);
        in_run = false;
      }
    }
  }

  // Replace(/^ $/ → sentinel): the only newlines were just replaced, so the anchors are
  // the string's ends.
  if (s.length() == 1 && s[0] == ' ') s = icu::UnicodeString(kSentinel);

  // Strip both sides by White_Space (Rust's char::is_whitespace).
  int32_t begin = 0, end = s.length();
  while (begin < end) {
    const UChar32 c = s.char32At(begin);
    if (!u_isUWhiteSpace(c)) break;
    begin += U16_LENGTH(c);
  }
  while (end > begin) {
    const UChar32 c = s.char32At(end - 1);
    if (!u_isUWhiteSpace(c)) break;
    end -= U16_LENGTH(c);
  }

  // Replace(sentinel → " "): every U+E000, including any the text had itself.
  icu::UnicodeString stripped(s, begin, end - begin);
  stripped.findAndReplace(icu::UnicodeString(kSentinel),
                          icu::UnicodeString(static_cast<UChar>(' ')));
  std::string out;
  stripped.toUTF8String(out);
  return out;
}

EngramTokenMap BuildEngramTokenMap(const Tokenizer& tokenizer) {
  constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  EngramTokenMap map;
  const int n = tokenizer.vocab_size();
  map.compressed.resize(n);
  absl::flat_hash_map<std::string, int64_t> key_to_id;
  key_to_id.reserve(n);
  for (int id = 0; id < n; ++id) {
    const int ids[] = {id};
    std::string text = tokenizer.Decode(ids, /*skip_special_tokens=*/false);
    std::string key;
    if (absl::StrContains(text, kReplacement)) {
      key = std::string(tokenizer.TokenString(id));
    } else {
      key = EngramNormalize(text);
      if (key.empty()) key = std::move(text);
    }
    const auto [it, inserted] = key_to_id.try_emplace(std::move(key), map.size);
    if (inserted) ++map.size;
    map.compressed[id] = it->second;
  }
  return map;
}

}  // namespace dsv4
