"""The aisfx teacher's clip embeddings cached once per corpus (clapkit.aisfx_cache): built, read back, keyed by the
checkpoint, the recipe and every clip's audio.  Needs the aisfx wheel (part of the set-up): fails, not skips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clapkit.aisfx_cache import TeacherEmbeddings, teacher_cache_key, teacher_embedding_cache
from clapkit.aisfx_teacher import load_aisfx_embedder

torch.set_num_threads(1)


class FakeCorpus:
    """What the cache reads of a PreparedCorpus: sample_rate, rows with ids, waveform(i)."""

    def __init__(self, waves: list[np.ndarray], sample_rate: int = 16000):
        self.sample_rate = sample_rate
        self.rows = [{"id": f"clip-{i}"} for i in range(len(waves))]
        self._waves = waves

    def waveform(self, i: int) -> np.ndarray:
        return self._waves[i]


def _corpus() -> FakeCorpus:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    return FakeCorpus([rng.standard_normal(16000 * 3).astype(np.float32),
                       np.sin(2 * math.pi * 440 * t).astype(np.float32),
                       rng.standard_normal(8000).astype(np.float32) * 0.1])


@pytest.fixture(scope="module")
def embedder():
    return load_aisfx_embedder()


def test_built_once_then_read_back(embedder, tmp_path):
    corpus = _corpus()
    cache, report = teacher_embedding_cache(embedder, corpus, [2, 0, 1], tmp_path)
    assert report["built"] and report["clips"] == 3 and cache.features.shape == (3, 512)
    assert cache.ids == ["clip-2", "clip-0", "clip-1"]
    direct = embedder.embed([corpus.waveform(i) for i in (2, 0, 1)], 16000)
    assert torch.allclose(cache.features, direct, atol=1e-6)
    again, report2 = teacher_embedding_cache(embedder, corpus, [2, 0, 1], tmp_path)
    assert not report2["built"] and report2["file"] == report["file"]
    assert torch.equal(again.features, cache.features) and again.ids == cache.ids
    assert torch.equal(again.for_ids(["clip-1", "clip-2"]), cache.features[[2, 0]])
    with pytest.raises(KeyError, match="clip-9"):
        again.for_ids(["clip-9"])
    assert [p.name for p in tmp_path.iterdir()] == [report["file"].split("/")[-1]]  # no temp files left


def test_the_key_follows_the_audio_the_recipe_and_the_clip_set(embedder):
    corpus = _corpus()
    key = teacher_cache_key(embedder, corpus, [0, 1, 2])
    assert teacher_cache_key(embedder, corpus, [0, 1, 2]) == key
    assert teacher_cache_key(embedder, corpus, [0, 1]) != key
    assert teacher_cache_key(load_aisfx_embedder({"block_hop": 50}), corpus, [0, 1, 2]) != key
    changed = _corpus()
    changed._waves[1] = changed._waves[1].copy()
    changed._waves[1][100] += 1e-3
    assert teacher_cache_key(embedder, changed, [0, 1, 2]) != key
    changed.sample_rate = 22050
    assert teacher_cache_key(embedder, _corpus(), [0, 1, 2]) == key != teacher_cache_key(embedder, changed, [0, 1, 2])


def test_a_foreign_file_under_the_name_is_rebuilt(embedder, tmp_path):
    corpus = _corpus()
    _, report = teacher_embedding_cache(embedder, corpus, [0], tmp_path)
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(1, 512)}, report["file"], metadata={"format": "other", "key": "x"})
    cache, report2 = teacher_embedding_cache(embedder, corpus, [0], tmp_path)
    assert report2["built"] and cache.features.abs().sum() > 0


def test_teacher_embeddings_validate_their_shape():
    with pytest.raises(ValueError, match="features for 3 clip ids"):
        TeacherEmbeddings(torch.zeros(2, 512), ["a", "b", "c"], "k")
    with pytest.raises(ValueError, match="duplicate"):
        TeacherEmbeddings(torch.zeros(2, 512), ["a", "a"], "k")
