#!/usr/bin/env python3
"""The training corpus: the King James Bible from Debian's bible-kjv-text (public domain),
printed by its `bible` reader, as plain text with one verse a line (verse numbers and
chapter headings dropped) and a blank line between chapters.

Held out: every 50th chapter (chapters 0, 50, 100, ... in canonical order, about 2% of
the text), so the held-out text covers books throughout the Bible, not one book.

  python3 scripts/train/corpus.py --out-dir /tmp/kjv   # writes train.txt and heldout.txt
"""
import argparse
import pathlib
import re
import subprocess

HELD_OUT_EVERY = 50


def chapters():
    """The chapters in canonical order, each a list of verse texts."""
    text = subprocess.run(["bible", "-l", "100000", "gen1:1-rev22:21"], check=True,
                          capture_output=True, text=True).stdout
    out, verses = [], None
    for line in text.splitlines():
        verse = re.match(r"^\s+\d+ (.*)$", line)
        if verse:
            verses.append(verse.group(1).strip())
        elif line.strip():  # a chapter heading such as "Genesis 1"
            verses = []
            out.append(verses)
    return out


def split():
    """(training text, held-out text)."""
    train, held = [], []
    for i, verses in enumerate(chapters()):
        (held if i % HELD_OUT_EVERY == 0 else train).append("\n".join(verses) + "\n")
    return "\n".join(train), "\n".join(held)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held = split()
    (out / "train.txt").write_text(train, encoding="utf-8")
    (out / "heldout.txt").write_text(held, encoding="utf-8")
    print(f"corpus: {len(train)} training characters, {len(held)} held out")


if __name__ == "__main__":
    main()
