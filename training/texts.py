"""General English text for the second-generation demo model (issue 16), normalised to the CTC vocabulary.

Sources: Debian's `fortunes` / `fortunes-min` data (quotations, jokes, proverbs: `apt-get install fortunes`;
/usr/share/games/fortunes) split into sentences, next to the demo grammar (training/grammar.py) as one part
among several. Normalisation: accents folded (cafe), numbers spelled out (num2words: years as years, ordinals as ordinals), '&' as
"and", '%' as "percent", every other symbol dropped, upper case A-Z and apostrophes only (the 32-symbol
vocabulary: letters, ', word breaks). A sentence is kept when it has 3-30 words and little was dropped from it
(no code, no ASCII art). Held-out sentences are chosen by a hash of the normalised text (disjoint from training
at the sentence level by construction, and the same on every machine).

Run: python -m training.texts [--out training/work/texts]  (prints the counts; writes train.txt, heldout.txt)
"""
from __future__ import annotations

import argparse
import json
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
SKIP_FILES = {"ascii-art", "art"}  # pictures, not sentences
HELDOUT_PER_MILLE = 50  # 5 %
MIN_WORDS, MAX_WORDS = 3, 30
_ATTRIBUTION = re.compile(r"^\s*(--|~~|―|—)\s*\S")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_NUMBER = re.compile(r"(?<![A-Za-z])(\d+(?:,\d{3})*(?:\.\d+)?)(st|nd|rd|th|s)?(?![A-Za-z\d])")
_KEEP = re.compile(r"[^A-Z' ]+")
_PROSE = ".,;:!?'\"()-&%$"


def fortune_entries(root: Path = FORTUNES) -> Iterator[tuple[str, str]]:
    """(file name, entry text) for every entry of the plain fortune files under ``root`` (entries end at '%')."""
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.suffix or path.name in SKIP_FILES or not path.is_file():
            continue  # .dat indexes and .u8 duplicates
        text = path.read_text(encoding="utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            if entry.strip():
                yield path.name, entry


def entry_sentences(entry: str) -> list[str]:
    """An entry's prose as sentences: attribution lines ('-- Mark Twain') and indented or symbol-heavy lines
    (verse layout is kept, code and pictures are not) are dropped."""
    lines = []
    for line in entry.splitlines():
        if _ATTRIBUTION.match(line) or not line.strip():
            continue
        letters = sum(c.isalpha() or c.isspace() for c in line)
        if letters < 0.8 * len(line):
            continue
        lines.append(line.strip())
    prose = " ".join(lines)
    return [s.strip() for s in _SENTENCE_END.split(prose) if s.strip()]


def _spell(match: re.Match) -> str:
    from num2words import num2words
    digits, suffix = match.group(1).replace(",", ""), (match.group(2) or "").lower()
    if "." in digits:
        words = num2words(float(digits))
    elif suffix in ("st", "nd", "rd", "th"):
        words = num2words(int(digits), to="ordinal")
    elif len(digits) == 4 and 1100 <= int(digits) <= 2099 and "," not in match.group(1):
        words = num2words(int(digits), to="year")  # 1984: nineteen eighty-four
    else:
        words = num2words(int(digits))
    if suffix == "s":  # the 1960s
        words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    return f" {words} "


def normalize(sentence: str) -> str | None:
    """A sentence in the model's vocabulary (upper case A-Z, apostrophes, single spaces), or None if it is not a
    sentence worth speaking (too short or long, or mostly symbols)."""
    s = sentence.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))  # cafe, naive
    symbols = sum(1 for c in s if not (c.isalnum() or c.isspace() or c in _PROSE))  # code and pictures have many
    s = s.replace("&", " and ").replace("%", " percent ")
    s = _NUMBER.sub(_spell, s).upper().replace("-", " ")
    words = [w.strip("'") for w in _KEEP.sub(" ", s).split()]
    words = [w for w in words if w]
    if not MIN_WORDS <= len(words) <= MAX_WORDS or symbols > 0.05 * len(s) or any(len(w) > 20 for w in words):
        return None
    return " ".join(words)


def is_heldout(text: str) -> bool:
    return zlib.crc32(text.encode()) % 1000 < HELDOUT_PER_MILLE


def split(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """Distinct normalised sentences → (train, held-out), in first-seen order."""
    seen: dict[str, None] = dict.fromkeys(texts)
    train = [t for t in seen if not is_heldout(t)]
    return train, [t for t in seen if is_heldout(t)]


def fortune_sentences(root: Path = FORTUNES) -> list[str]:
    return [n for _, entry in fortune_entries(root) for s in entry_sentences(entry) if (n := normalize(s))]


def stats(train: list[str], heldout: list[str]) -> dict:
    vocab = {w for t in train for w in t.split()}
    held_words = [w for t in heldout for w in t.split()]
    return {"train_sentences": len(train), "heldout_sentences": len(heldout), "train_words": sum(len(t.split())
            for t in train), "train_vocabulary": len(vocab), "heldout_words": len(held_words),
            "heldout_oov_rate": round(sum(w not in vocab for w in held_words) / max(1, len(held_words)), 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "work" / "texts"))
    ap.add_argument("--fortunes", default=str(FORTUNES))
    args = ap.parse_args(argv)
    sentences = fortune_sentences(Path(args.fortunes))
    if not sentences:
        raise SystemExit(f"no fortune text under {args.fortunes}: apt-get install fortunes fortunes-min")
    train, heldout = split(sentences)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "heldout.txt").write_text("\n".join(heldout) + "\n")
    report = stats(train, heldout)
    (out / "stats.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
