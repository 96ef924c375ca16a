"""Encodes text with a tokenizer.json written by scripts/make_tokenizer.py (DeepSeek's
Split pre-tokenizers, then byte-level BPE applying the lowest-ranked merge first), the
way core/tokenizer.cc does; the model's data pipeline and the reference test use it."""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import make_tokenizer  # noqa: E402  (the Split patterns and the \p{..} expansion)


class Tokenizer:
    def __init__(self, path):
        spec = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        self.vocab = spec["model"]["vocab"]
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(spec["model"]["merges"])}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        for added in spec["added_tokens"]:
            self.id_to_token[added["id"]] = added["content"]
        self.bos = next(a["id"] for a in spec["added_tokens"] if "begin▁of▁sentence" in a["content"])
        classes = make_tokenizer.category_classes()
        self.regexes = [make_tokenizer.to_python_regex(p, classes)
                        for p in make_tokenizer.SPLIT_PATTERNS]
        self.b2u = make_tokenizer.bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.cache = {}

    def _bpe(self, piece):
        word = [self.b2u[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            ranked = [(self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(word, word[1:]))]
            rank, i = min(ranked)
            if rank == 1 << 30:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        return [self.vocab[w] for w in word]

    def encode(self, text, bos=True):
        ids = [self.bos] if bos else []
        for piece in make_tokenizer.pre_tokenize(text, self.regexes):
            if piece not in self.cache:
                self.cache[piece] = self._bpe(piece)
            ids += self.cache[piece]
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            token = self.id_to_token[int(i)]
            if all(c in self.u2b for c in token):
                out += bytes(self.u2b[c] for c in token)
            else:
                out += token.encode("utf-8")
        return out.decode("utf-8", "replace")
