"""The second-generation demo model's text (training/texts.py): general English, normalised to the CTC vocabulary,
held-out sentences never in training."""
from __future__ import annotations

from training.texts import entry_sentences, fortune_entries, normalize, split, stats
from tests.support.tiny_models import LIBRISPEECH_VOCAB

SYMBOLS = {t for t in LIBRISPEECH_VOCAB if len(t) == 1 and t != "|"}


def test_numbers_symbols_and_case_are_normalised_to_the_vocabulary():
    assert normalize("In 1984, 3 dogs ate 2.5 pies & 40% of the cake!") == \
        "IN NINETEEN EIGHTY FOUR THREE DOGS ATE TWO POINT FIVE PIES AND FORTY PERCENT OF THE CAKE"
    assert normalize("It\u2019s the 2nd time in the 1960s.") == "IT'S THE SECOND TIME IN THE NINETEEN SIXTIES"
    assert normalize("'Quoted' words, well-known ones; 1,000,000 of them") == \
        "QUOTED WORDS WELL KNOWN ONES ONE MILLION OF THEM"
    for text in ("Caf\u00e9 au lait costs $4.50 (or \u20ac4) -- ok?", "He said: \"Don't!\" and left at 9 o'clock."):
        assert set(normalize(text)) <= SYMBOLS | {" "}  # nothing outside the model's 32 symbols


def test_code_pictures_and_fragments_are_not_sentences():
    assert normalize("x = f(y); return 0; } else { y[i] = *p++; }") is None
    assert normalize("Hello there.") is None                       # under 3 words
    assert normalize(" ".join(["word"] * 31)) is None               # over 30


def test_fortune_entries_become_sentences_without_attributions(tmp_path):
    (tmp_path / "wisdom").write_text("A stitch in time saves nine. Look before\nyou leap!\n"
                                     "\t\t-- Poor Richard\n%\n   /\\_/\\\n  ( o.o )\n   > ^ <\n%\n"
                                     "Why not? Because I said so.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "ascii-art").write_text("These are pictures, not sentences at all.\n%\n")
    entries = list(fortune_entries(tmp_path))
    assert [name for name, _ in entries] == ["wisdom"] * 3
    sentences = [s for _, e in entries for s in entry_sentences(e)]
    assert sentences == ["A stitch in time saves nine.", "Look before you leap!", "Why not?", "Because I said so."]
    assert [normalize(s) for s in sentences] == ["A STITCH IN TIME SAVES NINE", "LOOK BEFORE YOU LEAP", None,
                                                 "BECAUSE I SAID SO"]


def test_held_out_sentences_are_disjoint_deterministic_and_about_five_percent():
    texts = [f"SENTENCE NUMBER {' '.join(['ONE', 'TWO', 'THREE'][: 1 + i % 3])} {i}" for i in range(4000)]
    train, held = split(texts + texts[:100])  # duplicates count once
    assert not set(train) & set(held) and len(train) + len(held) == 4000
    assert 0.035 < len(held) / 4000 < 0.065
    assert split(list(reversed(texts)))[1] == list(reversed(held))  # by content, not position
    report = stats(train, held)
    assert report["train_sentences"] == len(train) and 0 <= report["heldout_oov_rate"] <= 1
