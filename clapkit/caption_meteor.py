"""METEOR with exact matching only, in Python, with Meteor 1.5's scoring formula.

The COCO caption toolkit runs Java Meteor 1.5 (``meteor-1.5.jar - - -stdio -l en -norm``), which aligns words in
four stages (exact, Snowball stem, WordNet synonym, paraphrase table).  None of those resources is here, so this is
its *exact stage only*; it is reported as ``meteor_exact`` and is a lower bound of sorts, never the Java number.

The score follows Meteor 1.5's ``MeteorScorer.computeMetrics`` ('en', task 'rank': alpha 0.85, beta 0.2, gamma 0.6,
delta 0.75, exact module weight 1.0):

* P = weighted matches / weighted test length, R likewise over the reference, a match and a word weighing delta when
  a content word and 1 - delta when a function word (with no function-word list, which is Meteor's default here,
  every word is a content word and delta cancels);
* Fmean = P R / (alpha P + (1 - alpha) R);
* frag = chunks / mean(matched test words, matched reference words), 0 when test and reference match entirely in
  one chunk; penalty = gamma frag^beta; score = Fmean (1 - penalty), 0 where undefined (an empty caption).

Per clip, the statistics of the best-scoring reference are kept (Meteor's multi-reference rule), and the corpus
score is computed once from the summed statistics, as Meteor's ``EVAL`` line that pycocoevalcap reads does: it is
not the mean of the clips' scores.  One consequence, Meteor's own: the corpus's chunks add up, so several clips
matched perfectly score below 1 (only a single whole match in a single chunk has no fragmentation penalty).

The alignment maximises the number of matches, then minimises the number of chunks (Meteor's first two criteria; its
third, the matches' summed distance, never changes the score).  Every assignment of repeated words is tried when
there are at most ``_MAX_ASSIGNMENTS``; beyond that, repeated words are paired in order (k-th with k-th).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

__all__ = ["METEOR_EN_RANK", "MeteorStats", "align_exact", "meteor_stats", "meteor_score_from_stats",
           "best_reference_stats"]

# Meteor 1.5 'en' parameters of the default 'rank' task: alpha, beta, gamma, delta.
METEOR_EN_RANK = (0.85, 0.2, 0.6, 0.75)
_MAX_ASSIGNMENTS = 5000


@dataclass(frozen=True)
class MeteorStats:
    """Meteor's sufficient statistics of one (test, reference) pair, or their sum over a corpus."""

    test_length: int = 0
    reference_length: int = 0
    test_function_words: int = 0
    reference_function_words: int = 0
    content_matches: int = 0
    function_matches: int = 0
    chunks: int = 0

    def __add__(self, other: MeteorStats) -> MeteorStats:
        return MeteorStats(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values())))


def _count_chunks(pairs: Sequence[tuple[int, int]]) -> int:
    """Runs of matches adjacent in both captions (pairs sorted by test position)."""
    return sum(1 for k, (i, j) in enumerate(pairs) if k == 0 or (i, j) != (pairs[k - 1][0] + 1, pairs[k - 1][1] + 1))


def align_exact(test: Sequence[str], reference: Sequence[str]) -> list[tuple[int, int]]:
    """(test index, reference index) pairs of equal words: as many as possible, in as few chunks as possible."""
    test_positions: dict[str, list[int]] = defaultdict(list)
    reference_positions: dict[str, list[int]] = defaultdict(list)
    for i, word in enumerate(test):
        test_positions[word].append(i)
    for j, word in enumerate(reference):
        reference_positions[word].append(j)
    shared = [(tpos, reference_positions[word]) for word, tpos in test_positions.items() if word in reference_positions]
    assignments = math.prod(math.perm(max(len(t), len(r)), min(len(t), len(r))) for t, r in shared)
    if assignments > _MAX_ASSIGNMENTS:  # too many repeats to try all: pair the k-th occurrences, in order
        options_per_word = [[list(zip(tpos, rpos))] for tpos, rpos in shared]
    else:  # per shared word, every injective pairing of its test occurrences with its reference occurrences
        options_per_word = [
            [list(zip(tpos, chosen)) for chosen in itertools.permutations(rpos, len(tpos))] if len(tpos) <= len(rpos)
            else [list(zip(chosen, rpos)) for chosen in itertools.permutations(tpos, len(rpos))]
            for tpos, rpos in shared
        ]  # fmt: skip
    best: list[tuple[int, int]] = []
    best_chunks = math.inf
    for combination in itertools.product(*options_per_word):
        pairs = sorted(p for pairs_of_word in combination for p in pairs_of_word)
        chunks = _count_chunks(pairs)
        if chunks < best_chunks:
            best, best_chunks = pairs, chunks
    return best


def meteor_stats(test: Sequence[str], reference: Sequence[str],
                 function_words: frozenset[str] = frozenset()) -> MeteorStats:  # fmt: skip
    """One (test, reference) pair's statistics; ``function_words`` (default none, every word a content word)."""
    pairs = align_exact(test, reference)
    function_matches = sum(1 for i, _ in pairs if test[i] in function_words)
    return MeteorStats(
        test_length=len(test), reference_length=len(reference),
        test_function_words=sum(1 for w in test if w in function_words),
        reference_function_words=sum(1 for w in reference if w in function_words),
        content_matches=len(pairs) - function_matches, function_matches=function_matches,
        chunks=_count_chunks(pairs),
    )  # fmt: skip


def meteor_score_from_stats(stats: MeteorStats,
                            parameters: tuple[float, float, float, float] = METEOR_EN_RANK) -> float:  # fmt: skip
    """Meteor 1.5's score of (summed) statistics; exact matches count on both sides alike."""
    alpha, beta, gamma, delta = parameters
    weighted_matches = delta * stats.content_matches + (1 - delta) * stats.function_matches
    test_weight = delta * (stats.test_length - stats.test_function_words) + (1 - delta) * stats.test_function_words
    reference_weight = (delta * (stats.reference_length - stats.reference_function_words)
                        + (1 - delta) * stats.reference_function_words)  # fmt: skip
    matches = stats.content_matches + stats.function_matches
    if weighted_matches == 0 or test_weight == 0 or reference_weight == 0:
        return 0.0  # Java: a NaN or zero F-mean, reported as 0
    precision, recall = weighted_matches / test_weight, weighted_matches / reference_weight
    f_mean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    whole_match = matches == stats.test_length == stats.reference_length and stats.chunks == 1
    fragmentation = 0.0 if whole_match else stats.chunks / matches
    return max(0.0, f_mean * (1.0 - gamma * fragmentation**beta))


def best_reference_stats(test: Sequence[str], references: Sequence[Sequence[str]],
                         function_words: frozenset[str] = frozenset()) -> MeteorStats:  # fmt: skip
    """The statistics against the reference Meteor scores best (the first of tied ones)."""
    candidates = [meteor_stats(test, reference, function_words) for reference in references]
    return max(candidates, key=meteor_score_from_stats)
