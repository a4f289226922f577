"""A small bigram ARPA file written by the tests themselves (absolute discounting with backoff to add-one
unigrams), so LM tests need no LM toolkit and no downloaded model."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

DISCOUNT = 0.5


def write_arpa(sentences: list[str], path: Path) -> Path:
    uni, bi = Counter(), Counter()
    for s in sentences:
        words = ["<s>", *s.split(), "</s>"]
        uni.update(words[1:])
        bi.update(zip(words, words[1:]))
    vocab = sorted(set(uni) | {"<s>", "<unk>"})
    total = sum(uni.values()) + len(vocab)
    p_uni = {w: (uni[w] + 1) / total for w in vocab}
    history = Counter(v for v, _ in bi.elements())
    followers = Counter(v for v, _ in bi)
    backoff = {}
    for v in vocab:
        if history[v]:
            seen = sum(p_uni[w] for (h, w) in bi if h == v)
            backoff[v] = DISCOUNT * followers[v] / history[v] / (1 - seen)
    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(bi)}", "", "\\1-grams:"]
    for w in vocab:
        logp = -99.0 if w == "<s>" else math.log10(p_uni[w])
        lines.append(f"{logp:.6f}\t{w}\t{math.log10(backoff[w]):.6f}" if w in backoff else f"{logp:.6f}\t{w}")
    lines += ["", "\\2-grams:"]
    for (v, w), c in sorted(bi.items()):
        lines.append(f"{math.log10((c - DISCOUNT) / history[v]):.6f}\t{v} {w}")
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path
