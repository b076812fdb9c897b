"""Count the most common words of one text file and write them as JSON.

The task script of workflows/word_count.yaml (after the Azure Batch Python tutorial's
task: one text file in, its top-N words out). Standard library only, so it runs with
the python3 of a stock Batch node.

    python3 wordcount.py INPUT.txt [--top N] [--out OUTPUT.json] [--keep-stopwords]

Words are runs of letters (any script; inner apostrophes kept, so "don't" is one word),
lowercased. Common English function words are left out unless --keep-stopwords.
Ties are broken alphabetically, so the output is the same on every run.
Output (UTF-8):
    {"file": "moby.txt", "words": 1234, "distinct": 456, "top": [{"word": "sea", "count": 12}, ...]}
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

CURLY_APOSTROPHE = "\u2019"
WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")

_STOPWORDS = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up upon very was we were what when where which while who whom why will with would
    you your yours yourself yourselves
"""
STOPWORDS = frozenset(_STOPWORDS.split())


def words(text: str) -> list[str]:
    """The words of `text`, lowercased, curly apostrophes made straight."""
    return [w.lower().replace(CURLY_APOSTROPHE, "'") for w in WORD.findall(text)]


def top_words(counts: Counter[str], n: int) -> list[tuple[str, int]]:
    """The `n` most frequent words, most frequent first, ties alphabetical."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]


def summarize(name: str, text: str, top: int, keep_stopwords: bool = False) -> dict[str, object]:
    all_words = words(text)
    counts = Counter(w for w in all_words if keep_stopwords or w not in STOPWORDS)
    return {
        "file": name,
        "words": len(all_words),
        "distinct": len(set(all_words)),
        "top": [{"word": w, "count": c} for w, c in top_words(counts, top)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the top-N words of a text file as JSON.")
    parser.add_argument("input", type=Path, help="a UTF-8 text file")
    parser.add_argument("--top", type=int, default=10, help="how many words (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="output file (default: <input stem>.counts.json)")
    parser.add_argument("--keep-stopwords", action="store_true", help="count 'the', 'and', ... too")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be at least 1, got {args.top}")
    try:
        text = args.input.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError) as e:
        print(f"wordcount: cannot read {args.input}: {e}", file=sys.stderr)
        return 1
    out: Path = args.out if args.out is not None else Path(f"{args.input.stem}.counts.json")
    result = summarize(args.input.name, text, args.top, args.keep_stopwords)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{args.input.name}: {result['words']} words, {result['distinct']} distinct -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
