"""Engram n-gram hashing as the official inference/engram.py defines it (spec
deepseek-v41-model.md §3): the compressed token map built from tokenizer.json, the
per-layer odd multipliers from NumPy's default_rng(10007·layer), the first unused primes
above engram_vocab_size − 1 per (layer, order, head), and the XOR chain of multiplied
compressed ids with sticky look-back blocking by the pad token."""
import json
import os
import re
import sys
import unicodedata

import numpy as np

# The ByteLevel alphabet is the tokenizer trainer's (scripts/make_tokenizer.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from make_tokenizer import bytes_to_unicode  # noqa: E402


# Unicode White_Space, what the tokenizers' Strip trims (Python's str.strip also trims
# U+001C..U+001F, which are not White_Space).
_WHITE_SPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _normalize(text):
    """The Engram key normalizer chain: NFKC, NFD, strip marks (category M), lowercase (per
    character, as Rust's char::to_lowercase: no final-sigma rule), fold whitespace runs to
    one space (a lone space survives), strip."""
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    text = "".join(ch.lower() for ch in text if not unicodedata.category(ch).startswith("M"))
    text = re.sub(r"[ \t\r\n]+", " ", text)
    text = "\ue000" if text == " " else text
    return text.strip(_WHITE_SPACE).replace("\ue000", " ")


def compressed_token_map(tokenizer_path):
    """(compressed id of every tokenizer id, number of distinct compressed ids)."""
    spec = json.load(open(tokenizer_path, encoding="utf-8"))
    id_to_token = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a["content"] for a in spec["added_tokens"]}
    id_to_token.update(added)
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    keys, out = {}, []
    for token_id in range(len(id_to_token)):
        raw = id_to_token[token_id]
        text = raw if token_id in added else bytes(u2b[c] for c in raw).decode("utf-8", "replace")
        if "\ufffd" in text:
            key = raw
        else:
            key = _normalize(text) or text
        out.append(keys.setdefault(key, len(keys)))
    return np.array(out, dtype=np.int64), len(keys)


def multipliers(layer_id, compressed_vocab, max_ngram):
    bound = max(1, (2**63 - 1) // compressed_vocab // 2)
    rng = np.random.default_rng(10007 * layer_id)
    return rng.integers(0, bound, size=max_ngram, dtype=np.int64) * 2 + 1


def _is_prime(v):
    if v < 2:
        return False
    q = 2
    while q * q <= v:
        if v % q == 0:
            return False
        q += 1
    return True


def primes_and_offsets(text_config):
    """Per Engram layer: (primes [columns], offsets [columns]) in column order (n−2)·K + j."""
    seen, out = set(), []
    orders, heads = text_config["engram_max_ngram_size"] - 1, text_config["engram_n_heads"]
    vocab = text_config["engram_vocab_size"]
    vocab = vocab if isinstance(vocab, list) else [vocab] * orders
    for _ in text_config["engram_layer_ids"]:
        primes, offsets, total = [], [], 0
        for o in range(orders):
            current = vocab[o] - 1
            for _ in range(heads):
                current += 1
                while not _is_prime(current) or current in seen:
                    current += 1
                seen.add(current)
                primes.append(current)
                offsets.append(total)
                total += current
        out.append((np.array(primes, dtype=np.int64), np.array(offsets, dtype=np.int64)))
    return out


class EngramHasher:
    """Table rows [B, T, columns] of every Engram layer for token ids [B, T] at positions
    0..T−1 (a prefill from the sequence start)."""

    def __init__(self, text_config, tokenizer_path):
        self.comp, self.size = compressed_token_map(tokenizer_path)
        self.n = text_config["engram_max_ngram_size"]
        self.heads = text_config["engram_n_heads"]
        self.pad = self.comp[text_config["engram_pad_token_id"]]
        self.layers = text_config["engram_layer_ids"]
        self.mult = [multipliers(l, self.size, self.n) for l in self.layers]
        self.tables = primes_and_offsets(text_config)

    def rows(self, tokens):
        tokens = np.asarray(tokens, dtype=np.int64)
        comp = self.comp[tokens]
        T = comp.shape[1]
        out = []
        for mult, (primes, offsets) in zip(self.mult, self.tables):
            products = []
            for s in range(self.n):
                # blocked for p < s (sticky by construction: p < s implies p < s + 1)
                shifted = np.full_like(comp, self.pad)
                shifted[:, s:] = comp[:, :T - s]
                products.append(shifted * mult[s])  # < 2^63 by the bound on multipliers
            rolling, cols = products[0], []
            for n in range(2, self.n + 1):
                rolling = rolling ^ products[n - 1]
                for j in range(self.heads):
                    col = (n - 2) * self.heads + j
                    cols.append(rolling % primes[col] + offsets[col])
            out.append(np.stack(cols, axis=-1))
        return out
