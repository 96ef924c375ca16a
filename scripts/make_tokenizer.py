#!/usr/bin/env python3
"""Trains a small byte-level BPE tokenizer and writes it as a Hugging Face tokenizer.json in
the DeepSeek-V3/V4 format, for the runnable presets (models/v4-mini, models/v4-tiny).

The file has DeepSeek's structure: no normalizer; a pre_tokenizer that is a Sequence of
three isolating regex Splits (digit groups of at most three, runs of CJK characters, then
words / punctuation / whitespace) followed by ByteLevel without its own regex; a BPE model
with merges as "a b" strings; a ByteLevel decoder; a TemplateProcessing post-processor that
prepends <｜begin▁of▁sentence｜>; and DeepSeek's special tokens.

Ids: BOS and EOS take the ids the model config gives (bos_token_id, eos_token_id), with
<｜▁pad▁｜> on the remaining id of 0..2; bytes 0..255 follow as ids 3..258 (byte b is
3 + b); merged tokens follow in merge order; the chat-template tokens close the vocabulary,
so that it has exactly config.vocab_size entries.

Pure standard library: \\p{..} classes are expanded from unicodedata so that Python's `re`
splits as PCRE2/Oniguruma do. Deterministic: the same corpus gives the same bytes.

  python3 scripts/make_tokenizer.py --config models/v4-tiny/config.json \\
      --out models/v4-tiny/tokenizer.json
"""
import argparse
import collections
import heapq
import json
import pathlib
import re
import sys
import unicodedata

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CORPUS = sorted((HERE / "tokenizer_corpus").glob("*.txt"))

# DeepSeek-V3's Split patterns, in order (the strings as they appear after JSON decoding).
SPLIT_PATTERNS = [
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+"
    "|\\s+(?!\\S)"
    "|\\s+",
]

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# Chat-template and tool-call markers, as DeepSeek's added tokens (not special: decoding with
# skip_special_tokens keeps them).
CHAT_TOKENS = [
    "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>", "<｜tool▁sep｜>",
]
FIRST_BYTE_ID = 3


def bytes_to_unicode():
    """GPT-2's bijection from bytes to printable characters (HF's ByteLevel alphabet)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) +
                 list(range(0xAE, 0xFF + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def category_classes():
    """For each major Unicode category letter (L, N, P, S, M, ...), the body of a regex
    character class matching it: \\p{X} for Python's `re`, which lacks it."""
    ranges = collections.defaultdict(list)
    for cp in range(0x110000):
        major = unicodedata.category(chr(cp))[0]
        spans = ranges[major]
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    return {major: "".join("\\U%08x-\\U%08x" % (lo, hi) for lo, hi in spans)
            for major, spans in ranges.items()}


def to_python_regex(pattern, classes):
    """Rewrites \\p{X} (X a major category) into explicit ranges, inside or outside a class."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            m = re.match(r"\\p\{(\w)\}", pattern[i:])
            if m:
                body = classes[m.group(1)]
                out.append(body if in_class else "[" + body + "]")
                i += len(m.group(0))
                continue
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return re.compile("".join(out))


def pre_tokenize(text, regexes):
    """HF's Sequence of Split(behavior=Isolated): every match and every gap is a piece."""
    pieces = [text]
    for regex in regexes:
        split = []
        for piece in pieces:
            prev = 0
            for m in regex.finditer(piece):
                if m.start() == m.end():
                    continue
                if m.start() > prev:
                    split.append(piece[prev:m.start()])
                split.append(m.group())
                prev = m.end()
            if prev < len(piece):
                split.append(piece[prev:])
        pieces = split
    return pieces


def train(word_counts, num_new_tokens):
    """Byte-level BPE: repeatedly merges the most frequent adjacent pair (ties broken by the
    pair's bytes) until `num_new_tokens` new tokens exist or every word is one token.
    Returns (token bytes by index, merges as index pairs); indices 0..255 are the bytes."""
    tokens = [bytes([b]) for b in range(256)]
    index = {t: i for i, t in enumerate(tokens)}
    words = [list(w) for w in word_counts]
    freqs = list(word_counts.values())
    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += f
            where[pair].add(w)
    heap = [(-c, tokens[a], tokens[b], a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(tokens) < 256 + num_new_tokens:
        while heap and -heap[0][0] != pair_count.get((heap[0][3], heap[0][4]), 0):
            heapq.heappop(heap)  # stale: the pair's count changed since it was pushed
        if not heap:
            break
        _, _, _, a, b = heapq.heappop(heap)
        merged = tokens[a] + tokens[b]
        if merged not in index:  # another pair can spell the same bytes: reuse its token
            index[merged] = len(tokens)
            tokens.append(merged)
        new = index[merged]
        merges.append((a, b))
        touched = set()
        for w in where.pop((a, b)):
            word, f = words[w], freqs[w]
            for pair in zip(word, word[1:]):
                pair_count[pair] -= f
                touched.add(pair)
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
            for pair in zip(out, out[1:]):
                pair_count[pair] += f
                where[pair].add(w)
                touched.add(pair)
        for pair in touched:
            c = pair_count[pair]
            if c <= 0:
                del pair_count[pair]
            elif pair != (a, b):
                heapq.heappush(heap, (-c, tokens[pair[0]], tokens[pair[1]]) + pair)
    return tokens, merges


def build(corpus_text, vocab_size, bos_id, eos_id):
    if bos_id == eos_id or not {bos_id, eos_id} <= {0, 1, 2}:
        sys.exit("make_tokenizer: bos_token_id and eos_token_id must be distinct ids in 0..2")
    leading = {bos_id: BOS, eos_id: EOS}
    leading[({0, 1, 2} - set(leading)).pop()] = PAD
    num_new = vocab_size - FIRST_BYTE_ID - 256 - len(CHAT_TOKENS)
    if num_new < 0:
        sys.exit(f"make_tokenizer: vocab_size {vocab_size} is too small")

    classes = category_classes()
    regexes = [to_python_regex(p, classes) for p in SPLIT_PATTERNS]
    word_counts = collections.Counter(
        piece.encode("utf-8") for piece in pre_tokenize(corpus_text, regexes))
    # A small corpus runs out of pairs long before a vocabulary of thousands is full, so
    # single units the Splits isolate are offered once each, after the corpus's own pairs
    # (they only ever count 1): every digit group of up to three digits, the letters of
    # accented Latin, Greek, Cyrillic and kana, then CJK ideographs in code point order.
    word_counts.update(str(n).encode() for n in range(1000))
    word_counts.update(f"{n:03d}".encode() for n in range(100))
    for lo, hi in ((0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x3041, 0x30FA)):
        word_counts.update(chr(c).encode() for c in range(lo, hi + 1)
                           if unicodedata.category(chr(c)).startswith("L"))
    word_counts.update(chr(c).encode() for c in range(0x4E00, 0x9FA6))
    tokens, merges = train(word_counts, num_new)
    # A small corpus runs out of pairs before a large vocabulary is full: the rest are
    # reserved tokens, as DeepSeek's own <｜place▁holder▁no▁N｜> ids.
    placeholders = [f"<｜place▁holder▁no▁{k}｜>" for k in range(num_new - (len(tokens) - 256))]

    b2u = bytes_to_unicode()

    def spell(i):
        return "".join(b2u[b] for b in tokens[i])

    vocab = {spell(i): FIRST_BYTE_ID + i for i in range(len(tokens))}
    added = [(i, leading[i], True) for i in sorted(leading)]
    next_id = FIRST_BYTE_ID + len(tokens)
    for names, special in ((placeholders, True), (CHAT_TOKENS, False)):
        added += [(next_id + k, t, special) for k, t in enumerate(names)]
        next_id += len(names)
    assert next_id == vocab_size

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": True, "special": special} for i, t, special in added
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated",
                 "invert": False} for p in SPLIT_PATTERNS
            ] + [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{spell(a)} {spell(b)}" for a, b in merges],
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True,
                        help="model config.json: vocab_size, bos_token_id, eos_token_id")
    parser.add_argument("--out", required=True, help="tokenizer.json to write")
    parser.add_argument("--corpus", nargs="*", default=DEFAULT_CORPUS,
                        help="training text files (default: scripts/tokenizer_corpus/*.txt)")
    args = parser.parse_args()
    config = json.loads(pathlib.Path(args.config).read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # V4.1 nests the text model's keys
    corpus = "\n".join(pathlib.Path(p).read_text(encoding="utf-8") for p in args.corpus)
    tokenizer = build(corpus, config["vocab_size"], config.get("bos_token_id", 0),
                      config.get("eos_token_id", 1))
    # HF's layout (indent 2), but one line per added token to keep the file small.
    added = tokenizer["added_tokens"]
    tokenizer["added_tokens"] = "@ADDED@"
    text = json.dumps(tokenizer, ensure_ascii=False, indent=2).replace(
        '"@ADDED@"',
        "[\n" + ",\n".join("    " + json.dumps(t, ensure_ascii=False) for t in added) + "\n  ]")
    pathlib.Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {config['vocab_size']} tokens, "
          f"{len(tokenizer['model']['merges'])} merges, {len(added)} added tokens")


if __name__ == "__main__":
    main()
