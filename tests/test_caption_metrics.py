"""clapkit.caption_metrics: the COCO caption toolkit's definitions, checked against values computed by hand (the
arithmetic is in the comments), plus invariants and the toolkit's behaviour on ties, empty captions and
punctuation.  No toolkit output is quoted: every expected number is derived here."""

import json
import math

import pytest

from clapkit import caption_spice
from clapkit.caption_meteor import align_exact, best_reference_stats, meteor_score_from_stats
from clapkit.caption_metrics import bleu, cider_d, meteor_exact, rouge_l, score_captions
from clapkit.caption_tokenizer import ptb_tokenize

TINY, SMALL = 1e-15, 1e-9  # bleu_scorer.py's smoothing constants


def toks(text):
    return tuple(text.split())


# ---------------------------------------------------------------- tokeniser


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("A dog's barking, loudly.", "a dog 's barking loudly"),
        ("They're walking... then -- stop!", "they 're walking then stop"),
        ("Don't, can't", "do n't ca n't"),
        ("A black-and-white cat (small) at 3.5 kHz; 1,000 birds: 10:30",
         "a black-and-white cat small at 3.5 khz 1,000 birds 10:30"),
        ("The U.S. flag and/or Mr. Smith", "the u.s. flag and/or mr. smith"),
        ('"Quoted" \'single\' dogs\' toys', "quoted single dogs toys"),
        ("It \u2019s raining", "it 's raining"),
        ("?!.,;:", ""),
        ("", ""),
    ],
)  # fmt: skip
def test_tokenizer_lowercases_splits_ptb_style_and_drops_the_toolkit_punctuation(caption, tokens):
    assert ptb_tokenize(caption) == toks(tokens)


# ---------------------------------------------------------------- BLEU


def test_bleu_hand_computed_clipped_ngram_precisions():
    # cand "the cat sat on the mat" (6 words); refs "the cat is on the mat" (6), "there is a cat on the mat" (7)
    # 1-grams: the x2 (max ref count 2), cat, sat (0), on, mat -> correct 5 of 6
    # 2-grams: the cat, cat sat, sat on, on the, the mat -> "the cat", "on the", "the mat" in a ref: 3 of 5
    # 3-grams: the cat sat, cat sat on, sat on the, on the mat -> "on the mat": 1 of 4
    # 4-grams: none of 3 in a ref: 0 of 3
    # closest ref length 6 = candidate length: ratio (6 + tiny) / (6 + small) < 1 by 1.7e-10, BP exp(1 - 1/ratio)
    references = [[toks("the cat is on the mat"), toks("there is a cat on the mat")]]
    scores = bleu([toks("the cat sat on the mat")], references)
    p = [(5 + TINY) / (6 + SMALL), (3 + TINY) / (5 + SMALL), (1 + TINY) / (4 + SMALL), (0 + TINY) / (3 + SMALL)]
    bp = math.exp(1 - 1 / ((6 + TINY) / (6 + SMALL)))
    expected = [math.prod(p[:n]) ** (1 / n) * bp for n in (1, 2, 3, 4)]
    assert scores == pytest.approx(expected, rel=1e-12)
    # i.e. 5/6, sqrt(5/6 * 3/5) = sqrt(1/2), (5/6 * 3/5 * 1/4)^(1/3) = 1/2, and ~0 for BLEU-4
    assert scores[:3] == pytest.approx([5 / 6, math.sqrt(0.5), 0.5], rel=1e-8)
    assert scores[3] < 1e-4


def test_bleu_brevity_penalty_uses_the_closest_reference_length():
    # cand "a dog barks" (c = 3); refs of 5 and 6 words -> r = 5; every 1- and 2-gram matches
    # BLEU-1 = BLEU-2 = exp(1 - 5/3) = exp(-2/3) = 0.5134
    scores = bleu([toks("a dog barks")], [[toks("a dog barks at night"), toks("a small dog barks loudly outside")]])
    assert scores[0] == pytest.approx(math.exp(-2 / 3), rel=1e-8)
    assert scores[1] == pytest.approx(math.exp(-2 / 3), rel=1e-8)


def test_bleu_closest_length_tie_goes_to_the_shorter_reference():
    # cand of 5 words, refs of 4 and 6: both 1 away; min((|l - c|, l)) picks 4 -> c > r, no brevity penalty.
    # (Picking 6 would give exp(1 - 6/5) = 0.82.)
    references = [[toks("two dogs bark at the mailman"), toks("dogs bark at night")]]
    scores = bleu([toks("dogs bark at the mailman")], references)
    assert scores[0] == pytest.approx(1.0, rel=1e-8)


def test_bleu_is_corpus_level_not_a_mean_of_clips():
    # clip 1: 3 of 3 unigrams match, clip 2: 0 of 2 -> BLEU-1 = 3/5 (the mean of clip scores would be 1/2)
    scores = bleu([toks("a dog barks"), toks("rain falls")], [[toks("a dog barks")], [toks("snow melts")]])
    assert scores[0] == pytest.approx(3 / 5, rel=1e-8)


def test_bleu_of_a_short_identical_caption_shows_the_toolkit_smoothing():
    # 3 words have no 4-gram: p4 = (0 + 1e-15) / (0 + 1e-9) = 1e-6, so BLEU-4 = (1 * 1 * 1 * 1e-6)^(1/4) = 0.0316
    scores = bleu([toks("a dog barks")], [[toks("a dog barks")]])
    assert scores[:3] == pytest.approx([1, 1, 1], rel=1e-8)
    assert scores[3] == pytest.approx((TINY / SMALL) ** 0.25, rel=1e-6)


# ---------------------------------------------------------------- ROUGE-L


def test_rouge_l_hand_computed_takes_max_precision_and_max_recall_separately():
    # cand "a dog barks at the cat" (6)
    # ref 1 "the dog barks" (3): LCS "dog barks" = 2 -> P 2/6, R 2/3
    # ref 2 "a big dog barks loudly at a cat" (8): LCS "a dog barks at cat" = 5 -> P 5/6, R 5/8
    # P = 5/6 (ref 2), R = 2/3 (ref 1): F = 2.44 * (5/6)(2/3) / (2/3 + 1.44 * 5/6) = (12.2/9) / (28/15) = 183/252
    score = rouge_l(toks("a dog barks at the cat"), [toks("the dog barks"), toks("a big dog barks loudly at a cat")])
    assert score == pytest.approx(183 / 252, rel=1e-12)


def test_rouge_l_empty_captions_follow_the_toolkit_split():
    # rouge.py splits "" on " " into [""]: an empty candidate has length 1 and LCS 0 with a real reference,
    # and matches an empty (punctuation-only) reference exactly
    assert rouge_l((), [toks("a dog")]) == 0.0
    assert rouge_l((), [()]) == 1.0


# ---------------------------------------------------------------- CIDEr-D


def test_cider_d_two_clip_tfidf_hand_computed():
    # N = 2 clips, log N = ln 2.  Clip A: cand "dog barks", ref "dog barks"; clip B: cand "cat", ref "cat meows".
    # Every reference n-gram is in 1 clip: idf = ln 2 - ln 1 = ln 2 (an n-gram in no reference: ln 2 - ln max(1, 0)).
    # A: 1-gram vectors (dog: ln2, barks: ln2) equal -> cos 1; 2-gram (dog barks: ln2) -> cos 1; 3-, 4-grams: none,
    #    norm 0 -> 0.  Lengths (bigram counts) 1 and 1 -> penalty 1.  10 * (1 + 1 + 0 + 0) / 4 = 5.
    # B: 1-grams cand (cat: ln2), ref (cat: ln2, meows: ln2): min(ln2, ln2) ln2 / (ln2 * sqrt(2) ln2) = 1/sqrt(2);
    #    2-grams: cand none -> 0.  Lengths 0 and 1: penalty exp(-1 / (2 * 36)).  10 * (1/sqrt 2) e^(-1/72) / 4.
    per_clip = cider_d([toks("dog barks"), toks("cat")], [[toks("dog barks")], [toks("cat meows")]])
    expected_b = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    assert per_clip == pytest.approx([5.0, expected_b], rel=1e-12)
    assert expected_b == pytest.approx(1.743384, abs=1e-6)


def test_cider_d_clips_candidate_counts_at_the_reference_counts():
    # A: cand "dog dog dog", ref "dog barks"; B as above.  1-grams: cand (dog: 3 ln2), ref (dog: ln2, barks: ln2):
    # clipped dot min(3 ln2, ln2) ln2 = ln2^2, norms 3 ln2 and sqrt(2) ln2 -> 1/(3 sqrt 2) (unclipped: 1/sqrt 2).
    # 2-grams: "dog dog" (x2) is in no reference -> 0; 3-grams: reference has none -> 0.
    # Lengths: 2 bigrams vs 1 -> exp(-1/72).  10 * e^(-1/72) / (3 sqrt 2) / 4 = 0.58113
    per_clip = cider_d([toks("dog dog dog"), toks("cat")], [[toks("dog barks")], [toks("cat meows")]])
    assert per_clip[0] == pytest.approx(10 * math.exp(-1 / 72) / (3 * math.sqrt(2)) / 4, rel=1e-12)


def test_cider_d_averages_over_each_clips_own_reference_count():
    # clip A with its reference given twice: df counts clips, not captions, so each similarity is as before;
    # their sum (2 * 0.5) divided by 2 references gives the same 5.0
    per_clip = cider_d([toks("dog barks"), toks("cat")], [[toks("dog barks")] * 2, [toks("cat meows")]])
    assert per_clip[0] == pytest.approx(5.0, rel=1e-12)


def test_cider_d_is_zero_for_a_one_clip_corpus():
    # idf = log 1 - log 1 = 0 for every n-gram: all vectors are 0 (the toolkit's behaviour)
    assert cider_d([toks("a dog barks")], [[toks("a dog barks")]]) == [0.0]


# ---------------------------------------------------------------- METEOR (exact)


def test_meteor_exact_hand_computed():
    # cand "dog barks at night" (4), ref "the dog barks loudly at night" (6): 4 exact matches
    # pairs (0,1) (1,2) | (2,4) (3,5): 2 chunks.  P = 1, R = 4/6.
    # Fmean = P R / (0.85 P + 0.15 R) = (2/3) / 0.95; frag = 2 / 4; score = Fmean (1 - 0.6 * 0.5^0.2) = 0.335207
    stats = best_reference_stats(toks("dog barks at night"), [toks("the dog barks loudly at night"), toks("cat")])
    assert (stats.content_matches, stats.chunks, stats.reference_length) == (4, 2, 6)
    expected = (2 / 3) / 0.95 * (1 - 0.6 * 0.5**0.2)
    assert meteor_score_from_stats(stats) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.335207, abs=1e-6)


def test_meteor_alignment_minimises_chunks_among_maximal_matchings():
    # cand "a dog and a cat", ref "a cat and a dog": 5 matches either way; pairing the "a"s in order gives
    # (0,0) | (1,4) | (2,2) (3,3) | (4,1) = 4 chunks, crossing them gives (0,3) (1,4) | (2,2) | (3,0) (4,1) = 3.
    # score = 1 * (1 - 0.6 * (3/5)^0.2) = 0.458272
    pairs = align_exact(toks("a dog and a cat"), toks("a cat and a dog"))
    assert pairs == [(0, 3), (1, 4), (2, 2), (3, 0), (4, 1)]
    stats = best_reference_stats(toks("a dog and a cat"), [toks("a cat and a dog")])
    assert meteor_score_from_stats(stats) == pytest.approx(1 - 0.6 * 0.6**0.2, rel=1e-12)


def test_meteor_is_computed_from_summed_statistics_like_meteors_eval_line():
    # clip 1 "dog barks" = its ref (2 matches, 1 chunk), clip 2 "cat" vs "bird" (0): totals 3 test words,
    # 3 reference words, 2 matches, 1 chunk.  P = R = Fmean = 2/3, not a whole match -> frag 1/2:
    # 2/3 (1 - 0.6 * 0.5^0.2) = 0.31845 (the mean of clip scores would be 0.5)
    score = meteor_exact([toks("dog barks"), toks("cat")], [[toks("dog barks")], [toks("bird")]])
    assert score == pytest.approx(2 / 3 * (1 - 0.6 * 0.5**0.2), rel=1e-12)


def test_meteor_identical_is_one_and_empty_is_zero():
    assert meteor_exact([toks("a dog barks at night")], [[toks("a dog barks at night")]]) == 1.0
    assert meteor_exact([()], [[toks("a dog barks")]]) == 0.0


# ---------------------------------------------------------------- score_captions: invariants and edge cases

CANDIDATES = {"clip_a": "A dog barks loudly at night.", "clip_b": "Rain falls on a tin roof", "clip_c": "Birds sing."}
REFERENCES = {
    "clip_a": ["A dog is barking loudly at night.", "a dog barks", "Loud barking of a dog at night"],
    "clip_b": ["Heavy rain falls on a tin roof.", "Rain on the roof"],
    "clip_c": ["Birds are singing in the trees", "birds chirp", "several birds sing", "a bird sings"],
}


def test_identical_candidates_score_bleu_and_rouge_one():
    references = {"x": ["a dog barks at the postman"], "y": ["heavy rain falls on a tin roof"]}
    scores = score_captions({"x": "A dog barks at the postman.", "y": "Heavy rain falls on a tin roof"}, references)
    assert [scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4] == pytest.approx([1, 1, 1, 1], rel=1e-8)
    assert scores.rouge_l == 1.0
    # Meteor's corpus statistics add the clips' chunks: 13 words matched in 2 chunks is not "one whole match",
    # so even a perfect corpus of 2 clips scores 1 - 0.6 (2/13)^0.2 = 0.5874 (each clip alone scores 1)
    assert scores.meteor_exact == pytest.approx(1 - 0.6 * (2 / 13) ** 0.2, rel=1e-12)


def test_a_candidate_sharing_no_word_scores_zero():
    scores = score_captions({"x": "thunder rumbles", "y": "engine idles"}, {"x": ["a dog barks"], "y": ["birds sing"]})
    assert scores.bleu_1 < 1e-6 and scores.bleu_4 < 1e-6
    assert scores.rouge_l == 0.0 and scores.cider_d == 0.0 and scores.meteor_exact == 0.0


def test_clip_order_and_reference_order_change_nothing():
    forward = score_captions(CANDIDATES, REFERENCES)
    backward = score_captions(dict(reversed(CANDIDATES.items())),
                              {clip: refs[::-1] for clip, refs in reversed(REFERENCES.items())})  # fmt: skip
    # equal up to the rounding of sums taken in another order
    for name, value in vars(forward).items():
        if isinstance(value, float):
            assert getattr(backward, name) == pytest.approx(value, rel=1e-12), name
    assert backward.cider_d_per_clip == pytest.approx(forward.cider_d_per_clip, rel=1e-12)
    assert list(backward.cider_d_per_clip) == list(forward.cider_d_per_clip)


def test_empty_and_punctuation_only_candidates_score_as_the_toolkit():
    # after tokenisation both are empty: BLEU counts no n-gram for them but adds their closest reference length:
    # c = 3, r = 3 + 3 -> BP exp(1 - 6/3) = e^-1 on BLEU-1 = (3/3); ROUGE-L (0 + 1) / 2; their CIDEr-D is 0
    for empty in ("", "?!..."):
        scores = score_captions({"x": empty, "y": "a cat meows"}, {"x": ["a dog barks"], "y": ["a cat meows"]})
        assert scores.bleu_1 == pytest.approx(math.exp(-1), rel=1e-8)
        assert scores.rouge_l == pytest.approx(0.5, rel=1e-12)
        assert scores.cider_d_per_clip["x"] == 0.0


def test_clip_id_disagreement_names_the_clips():
    with pytest.raises(ValueError, match=r"no references for \['only_cand'\].*no candidate for \['only_ref'\]"):
        score_captions({"a": "x", "only_cand": "y"}, {"a": ["x"], "only_ref": ["z"]})
    with pytest.raises(ValueError, match="clip 'a'"):
        score_captions({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="clip 'a'"):
        score_captions({"a": "x"}, {"a": "x"})


def test_spice_is_none_with_a_reason_when_java_or_the_jar_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv(caption_spice.SPICE_JAR_ENV, raising=False)
    scores = score_captions(CANDIDATES, REFERENCES)
    assert scores.spice is None and scores.spider is None
    assert any("spice, spider unavailable" in note for note in scores.notes)
    missing = tmp_path / "spice-1.0.jar"
    monkeypatch.setattr(caption_spice.shutil, "which", lambda name: "/usr/bin/java")  # Java or not on this machine
    assert "SPICE jar not found" in score_captions(CANDIDATES, REFERENCES, spice_jar=missing).notes[-1]
    monkeypatch.setenv(caption_spice.SPICE_JAR_ENV, str(missing))  # the env var is read when no jar is passed
    assert "SPICE jar not found" in score_captions(CANDIDATES, REFERENCES).notes[-1]
    monkeypatch.setattr(caption_spice.shutil, "which", lambda name: None)
    assert "no 'java' on PATH" in score_captions(CANDIDATES, REFERENCES, spice_jar=missing).notes[-1]


def test_to_json_carries_every_score_and_the_meteor_label():
    scores = score_captions(CANDIDATES, REFERENCES)
    data = json.loads(scores.to_json())
    assert set(data) >= {"bleu_1", "bleu_4", "rouge_l", "cider_d", "meteor_exact", "spice", "spider", "notes"}
    assert set(data["cider_d_per_clip"]) == set(CANDIDATES)
    assert data["cider_d"] == pytest.approx(sum(data["cider_d_per_clip"].values()) / 3, rel=1e-12)
    assert any(note.startswith("meteor_exact") for note in data["notes"])
