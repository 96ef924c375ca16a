// The reference side of the tokenizer parity tests (tokenizer_test.cc, engram_token_map_test.cc):
// Hugging Face's pure-JS tokenizer.json implementation (@huggingface/tokenizers, pinned in
// third_party/js/package.json and installed there by scripts/install-deps.sh) computes what
// the C++ code must reproduce. Nothing here shares code with the C++ side.
//
//   node tests/tokenizer_parity.mjs normalize <normalizer.json> <texts.json> <out.json>
//       the normalizer the JSON describes (a tokenizer.json "normalizer" object), applied to
//       each text: {"library": [...], "rust": [...]}
//   node tests/tokenizer_parity.mjs encode <tokenizer.json> <texts.json> <out.json>
//       token ids of each text with the post-processor's specials: [[ids], ...]
//   node tests/tokenizer_parity.mjs token-map <tokenizer.json> <normalizer.json> <out.json>
//       the raw decode of every id and the official build_compressed_token_map re-implemented
//       on this library's decode and normalizer: {"decoded": [...], "compressed": [...],
//       "size": n, "library_size": n}
//
// "rust" results run the library's normalizer with two steps changed to what the Rust
// `tokenizers` crate (the Python package's backend, which the official code uses) does,
// where the JS library differs:
// - Lowercase: Rust maps each character alone (char::to_lowercase); JS toLowerCase() applies
//   the Final_Sigma context rule, so "ΟΔΟΣ" would end in "ς" instead of "σ".
// - Strip: Rust trims White_Space characters (char::is_whitespace); JS trim() trims its own
//   set, which includes U+FEFF and misses U+0085.
// "library" results are the library unchanged; the tests report how many texts differ.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(resolve(root, "third_party/js/package.json"));
let lib;
try {
  lib = require("@huggingface/tokenizers");
} catch (e) {
  console.error(
    `tokenizer_parity: cannot load @huggingface/tokenizers from ${root}/third_party/js ` +
      `(run scripts/install-deps.sh): ${e.message}`,
  );
  process.exit(3);
}
const { Tokenizer, SequenceNormalizer, LowercaseNormalizer, StripNormalizer, Normalizer } = lib;

class RustLowercase extends Normalizer {
  normalize(text) {
    let out = "";
    for (const c of text) out += c.toLowerCase();  // one code point at a time: no context
    return out;
  }
}

class RustStrip extends Normalizer {
  normalize(text) {
    if (this.config.strip_left) text = text.replace(/^\p{White_Space}+/u, "");
    if (this.config.strip_right) text = text.replace(/\p{White_Space}+$/u, "");
    return text;
  }
}

function makeNormalizer(config, rust) {
  const sequence = new SequenceNormalizer(
    config.type === "Sequence" ? config : { type: "Sequence", normalizers: [config] },
  );
  if (rust) {
    sequence.normalizers = sequence.normalizers.map((n, i) => {
      if (n instanceof LowercaseNormalizer) return new RustLowercase(sequence.config.normalizers[i]);
      if (n instanceof StripNormalizer) return new RustStrip(sequence.config.normalizers[i]);
      return n;
    });
  }
  return (text) => sequence.normalize(text);
}

function loadTokenizer(path) {
  return new Tokenizer(JSON.parse(readFileSync(path, "utf8")), {});
}

function vocabSize(tokenizer) {
  return tokenizer.model.vocab.length;  // one past the largest id, added tokens included
}

// The official build_compressed_token_map with this library's decode and `normalize`.
function tokenMap(tokenizer, normalize) {
  const keys = new Map();
  const compressed = [];
  for (let id = 0; id < vocabSize(tokenizer); ++id) {
    const text = tokenizer.decode([id], {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
    let key;
    if (text.includes("\uFFFD")) {
      key = tokenizer.id_to_token(id);
    } else {
      const normalized = normalize(text);
      key = normalized ? normalized : text;
    }
    if (!keys.has(key)) keys.set(key, keys.size);
    compressed.push(keys.get(key));
  }
  return { compressed, size: keys.size };
}

const [mode, ...args] = process.argv.slice(2);
const readJson = (path) => JSON.parse(readFileSync(path, "utf8"));
let result;
if (mode === "normalize" && args.length === 3) {
  const config = readJson(args[0]);
  const texts = readJson(args[1]);
  const library = makeNormalizer(config, false);
  const rust = makeNormalizer(config, true);
  result = { library: texts.map(library), rust: texts.map(rust) };
} else if (mode === "encode" && args.length === 3) {
  const tokenizer = loadTokenizer(args[0]);
  result = readJson(args[1]).map((text) => tokenizer.encode(text).ids);
} else if (mode === "token-map" && args.length === 3) {
  const tokenizer = loadTokenizer(args[0]);
  const config = readJson(args[1]);
  const decoded = [];
  for (let id = 0; id < vocabSize(tokenizer); ++id) {
    decoded.push(
      tokenizer.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false }),
    );
  }
  const rust = tokenMap(tokenizer, makeNormalizer(config, true));
  const library = tokenMap(tokenizer, makeNormalizer(config, false));
  result = { decoded, compressed: rust.compressed, size: rust.size, library_size: library.size };
} else {
  console.error(
    "usage: tokenizer_parity.mjs normalize|encode|token-map <json> <json> <out.json>",
  );
  process.exit(2);
}
writeFileSync(args[2], JSON.stringify(result));
