"""WER stage: equality with jiwer, edge cases, pooling, batch formats, normalisation."""
import jiwer
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sew_pipeline import metrics

PAIRS = [
    ("MISTER QUILTER IS THE APOSTLE", "MISTER QUILTER IS APOSTLE OF"),
    ("THE CUT ON HIS CHEST", "THE CAT ON HIS CHEST STILL"),
    ("", "SOMETHING SAID"),  # empty reference, non-empty hypothesis
    ("", ""),  # both empty
    ("I DON'T KNOW", ""),  # empty hypothesis
    ("  it   was\tthe FIRST ", "IT WAS THE FIRST"),  # normalisation makes these equal
]


def _frame(pairs, **extra):
    return pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(len(pairs))],
            "reference": [r for r, _ in pairs],
            "hypothesis": [h for _, h in pairs],
            **extra,
        }
    )


@pytest.mark.parametrize("ref,hyp", PAIRS)
def test_per_utterance_wer_cer_equal_jiwer(ref, hyp):
    scored = metrics.score_frame(_frame([(ref, hyp)]))
    r, h = metrics.normalize_minimal(ref), metrics.normalize_minimal(hyp)
    assert scored["wer"][0] == jiwer.wer(r, h)
    assert scored["cer"][0] == jiwer.cer(r, h)
    out = jiwer.process_words(r, h)
    assert (scored["hits"][0], scored["substitutions"][0], scored["deletions"][0], scored["insertions"][0]) == (
        out.hits, out.substitutions, out.deletions, out.insertions)
    rw, hw = metrics.normalize_whisper(ref), metrics.normalize_whisper(hyp)
    assert scored["wer_whisper"][0] == jiwer.wer(rw, hw)
    assert scored["cer_whisper"][0] == jiwer.cer(rw, hw)


def test_empty_reference_rules_by_hand():
    scored = metrics.score_frame(_frame([("", "A B"), ("", ""), ("A B", "")]))
    assert list(scored["wer"]) == [2.0, 0.0, 1.0]
    assert list(scored["insertions"]) == [2, 0, 0]
    assert list(scored["deletions"]) == [0, 0, 2]
    assert list(scored["cer"]) == [3.0, 0.0, 1.0]  # "A B" is 3 characters


def test_corpus_scores_equal_jiwer_on_lists():
    df = _frame(PAIRS)
    got = metrics.corpus_scores(metrics.score_frame(df))
    refs = [metrics.normalize_minimal(r) for r, _ in PAIRS]
    hyps = [metrics.normalize_minimal(h) for _, h in PAIRS]
    assert got["wer"] == jiwer.wer(refs, hyps)
    assert got["cer"] == jiwer.cer(refs, hyps)
    assert got["n_words"] == sum(len(r.split()) for r in refs)
    assert got["n_utts"] == len(PAIRS)


def test_all_empty_references_pooled_like_jiwer():
    pairs = [("", "A"), ("", "B C")]
    got = metrics.corpus_scores(metrics.score_frame(_frame(pairs)))
    assert got["wer"] == jiwer.wer(["", ""], ["A", "B C"]) == 3
    assert got["cer"] == jiwer.cer(["", ""], ["A", "B C"]) == 4


def test_pooled_corpus_wer_differs_from_mean_of_utterance_wers():
    # A 1-word utterance fully wrong (WER 1.0) and a 9-word utterance fully right (WER 0).
    pairs = [("HELLO", "YELLOW"), ("ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE",) * 2]
    scored = metrics.score_frame(_frame(pairs))
    pooled = metrics.corpus_scores(scored)["wer"]
    assert pooled == pytest.approx(1 / 10)  # 1 error over 10 reference words
    assert scored["wer"].mean() == pytest.approx(0.5)
    assert pooled != pytest.approx(scored["wer"].mean())


def test_aggregate_per_split_and_speaker_pooled():
    pairs = [("A B C D", "A B C X"), ("E F", "E"), ("G H I", "G H I J K")]
    df = _frame(pairs, split=["dev-clean", "dev-clean", "test-clean"], speaker=["1", "2", "3"])
    scored = metrics.score_frame(df)
    by_split = metrics.aggregate(scored, "split").set_index("split")
    assert by_split.loc["dev-clean", "wer"] == pytest.approx(2 / 6)  # 1 sub + 1 del over 6 words
    assert by_split.loc["dev-clean", "n_utts"] == 2
    assert by_split.loc["test-clean", "wer"] == pytest.approx(2 / 3)  # 2 insertions over 3 words
    by_spk = metrics.aggregate(scored, ["split", "speaker"])
    assert len(by_spk) == 3
    assert by_spk.set_index("speaker").loc["2", "deletions"] == 1


def test_null_hypothesis_scores_as_all_deletions():
    df = _frame([("A B C", None)])
    scored = metrics.score_frame(df)
    assert scored["deletions"][0] == 3 and scored["wer"][0] == 1.0


def test_score_batch_formats_roundtrip_same_numbers():
    df = _frame(PAIRS[:3])
    want = metrics.score_frame(df)["wer"].tolist()
    table = metrics.score_batch(pa.Table.from_pandas(df, preserve_index=False))
    assert isinstance(table, pa.Table) and table.column("wer").to_pylist() == want
    numpy_batch = metrics.score_batch({k: np.asarray(v, dtype=object) for k, v in df.items()})
    assert isinstance(numpy_batch, dict) and list(numpy_batch["wer"]) == want
    with pytest.raises(TypeError):
        metrics.score_batch([1, 2])


def test_minimal_normalisation_keeps_apostrophes_and_punctuation():
    assert metrics.normalize_minimal("  don't\n stop ,now ") == "DON'T STOP ,NOW"
    assert metrics.normalize_minimal(None) == ""


@pytest.mark.parametrize(
    "text,want",
    [
        ("Mr. Smith won't go", "mister smith will not go"),
        ("I DON'T know, uh, [noise] what's (laughs) this", "i do not know what is this"),
        ("café  naïve!", "cafe naive"),
        ("1,000 people; it's", "1000 people it is"),
        ("Hmm... we'll see", "we will see"),
    ],
)
def test_whisper_normalisation(text, want):
    assert metrics.normalize_whisper(text) == want


def test_whisper_normalisation_applied_to_both_sides():
    scored = metrics.score_frame(_frame([("I DON'T KNOW", "i do not know.")]))
    assert scored["wer"][0] > 0  # minimal keeps the surface difference
    assert scored["wer_whisper"][0] == 0.0


def test_whisper_can_be_disabled():
    scored = metrics.score_frame(_frame(PAIRS[:1]), whisper=False)
    assert "wer_whisper" not in scored.columns
    assert "wer_whisper" not in metrics.corpus_scores(scored)


def test_score_batch_as_a_ray_data_stage(ray_session):
    import ray
    df = _frame(PAIRS, split="dev-clean")
    want = metrics.score_frame(df).set_index("id")["wer"]
    for fmt in ("pandas", "pyarrow"):
        out = ray.data.from_pandas(df).map_batches(metrics.score_batch, batch_format=fmt, batch_size=2).to_pandas()
        assert out.set_index("id")["wer"].sort_index().tolist() == want.sort_index().tolist()
