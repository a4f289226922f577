from pathlib import Path

import pytest

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
LIBRISPEECH_ROOT = TEST_DATA / "LibriSpeech"
SPEECH_COMMANDS = TEST_DATA / "speech_commands"


@pytest.fixture(scope="session")
def test_data() -> Path:
    return TEST_DATA
