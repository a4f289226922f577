"""The synthetic call generator (tests/support/calls.py): its ground truth matches its audio."""
from __future__ import annotations

import numpy as np
import pytest

from sew_pipeline.audio import decode
from tests.support.calls import SR, demo_utterances, make_call


@pytest.fixture(scope="module")
def utterances():
    return demo_utterances()


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12)


def _mask(call, channel: int) -> np.ndarray:
    m = np.zeros(call.audio.shape[0], bool)
    for t in call.turns:
        if t.channel == channel:
            m[int(t.start_s * SR):int(t.end_s * SR)] = True
    return m


def _echo_corr(call, ch: int, where: np.ndarray, delay_s: float = 0.12) -> float:
    """Correlation of this channel with the other one delayed by the echo path, over `where`."""
    delayed = np.roll(call.audio[:, 1 - ch], int(delay_s * SR))
    return float(np.corrcoef(call.audio[where, ch], delayed[where])[0, 1])


def test_call_turns_alternate_fill_the_call_and_read_back_as_ulaw_stereo(utterances):
    call = make_call(utterances, duration_s=120, seed=3)
    assert len(call.turns) >= 20 and {t.text for t in call.turns} <= {u[1] for u in utterances}
    assert all(a.channel != b.channel for a, b in zip(call.turns, call.turns[1:]))
    assert all(0 <= t.start_s < t.end_s <= call.duration_s for t in call.turns)
    for ch in (0, 1):  # each party speaks a minority of the time, as in real calls
        assert 0.30 <= call.speech_fraction(ch) <= 0.50, call.speech_fraction(ch)
    assert call.overlaps()  # some turns start before the other party has finished
    x, sr = decode(call.ulaw_wav())  # what the pipeline will read: 8 kHz µ-law stereo, [channels, samples]
    assert sr == SR and x.shape == call.audio.T.shape
    assert np.max(np.abs(x - call.audio.T)) < 0.02  # µ-law quantization only


def test_turns_are_where_the_speech_is_and_echo_is_the_other_party(utterances):
    call = make_call(utterances, duration_s=60, seed=5, overlap_p=0.0, echo_db=-24.0)
    dry = make_call(utterances, duration_s=60, seed=5, overlap_p=0.0, echo_db=None)
    for ch in (0, 1):
        speaking, other = _mask(call, ch), _mask(call, 1 - ch)
        quiet = ~speaking & ~other
        # speech at about -20 dBFS, line noise at -50: the turns are where the energy is
        assert _rms_db(call.audio[speaking, ch]) > _rms_db(call.audio[quiet, ch]) + 25
        # while the other party speaks, this channel carries their echo: their voice 0.12 s later, 24 dB down
        listening = other & ~speaking
        assert -30 < _rms_db(call.audio[listening, ch]) - _rms_db(call.audio[other, 1 - ch]) < -18
        assert _echo_corr(call, ch, listening) > 0.7 and abs(_echo_corr(dry, ch, listening)) < 0.1
        assert _rms_db(dry.audio[listening, ch]) < _rms_db(dry.audio[quiet, ch]) + 3
