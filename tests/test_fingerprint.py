"""Audio content hashes: identical audio hashes alike across files and formats, different audio does not."""
import numpy as np
import soundfile as sf

from clapkit.data.fingerprint import audio_content_hash, file_content_hash


def test_same_audio_same_hash_across_lossless_formats(tmp_path):
    rng = np.random.default_rng(0)
    # int16 samples: libsndfile's float -> PCM_16 conversion rounds differently for WAV and FLAC
    stereo = rng.integers(-16000, 16000, (8000, 2)).astype(np.int16)
    sf.write(tmp_path / "a.wav", stereo, 16000, subtype="PCM_16")
    sf.write(tmp_path / "b.flac", stereo, 16000, subtype="PCM_16")
    assert file_content_hash(tmp_path / "a.wav") == file_content_hash(tmp_path / "b.flac")


def test_hash_depends_on_samples_and_rate_not_on_layout():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 1000)).astype(np.float32)
    base = audio_content_hash(x, 16000)
    assert audio_content_hash(x.mean(axis=0), 16000) == base  # mono of the same mix
    assert audio_content_hash(x, 22050) != base  # same numbers, another rate: another recording
    y = x.copy()
    y[0, 500] += 0.01  # one sample moves by ~330 LSB
    assert audio_content_hash(y, 16000) != base
    assert len(base) == 32 and int(base, 16) >= 0
