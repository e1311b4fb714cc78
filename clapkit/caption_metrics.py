"""The COCO captioning metrics (BLEU-1..4, ROUGE-L, CIDEr-D, METEOR, SPICE, SPIDEr) in Python, no network.

Audio captioning (AudioCaps, Clotho, DCASE Task 6) is scored with the COCO caption toolkit, pycocoevalcap
(tylin/coco-caption, salaniz/pycocoevalcap).  ``score_captions`` reproduces its definitions on its tokens:

* tokens: ``clapkit.caption_tokenizer.ptb_tokenize`` (the toolkit's PTB tokenisation and punctuation removal);
* BLEU-n (``bleu/bleu_scorer.py``, ``compute_score(option='closest')``): *corpus-level*.  Clipped n-gram matches
  (a candidate n-gram counts at most as often as in the reference holding it most often) and candidate n-grams are
  summed over clips; BLEU-n = prod_{k<=n} ((correct_k + 1e-15) / (guess_k + 1e-9))^(1/n), times the brevity
  penalty exp(1 - r/c) when c < r, where c = summed candidate lengths and r = summed lengths of each clip's
  reference closest in length to its candidate (a tie goes to the shorter), ratio (c + 1e-15) / (r + 1e-9);
* ROUGE-L (``rouge/rouge.py``): per clip, LCS with every reference, P = max_ref LCS/|cand|, R = max_ref LCS/|ref|
  (the two maxima may come from different references), F = (1 + 1.2^2) P R / (R + 1.2^2 P), 0 when P or R is 0;
  the mean over clips.  The toolkit splits on " ", so an empty candidate is one empty token ([""]);
* CIDEr-D (``cider/cider_scorer.py``; the toolkit's "CIDEr" is CIDEr-D): document frequency df(g) = number of
  clips whose references contain n-gram g, over the clips evaluated; weight tf(g) (log N - log max(1, df(g)))
  with N the number of clips; per n = 1..4, sum over references of the cosine of the candidate and reference
  vectors with the candidate's weights clipped at the reference's (min(v_c, v_r) v_r / |v_c||v_r|, 0 for a zero
  norm) times exp(-(l_c - l_r)^2 / (2 * 6^2)); the mean over n, divided by the number of references, times 10;
  the mean over clips.  The toolkit's lengths l are numbers of *bigrams* (its ``if n == 1`` counts the 2-gram
  slot), i.e. words - 1 for a non-empty caption; kept.  With one clip every weight is log 1 = 0: CIDEr-D is 0;
* METEOR: ``clapkit.caption_meteor``, exact matching only, reported as ``meteor_exact`` (not Java METEOR 1.5,
  which adds stem, synonym and paraphrase matches and scores higher);
* SPICE: ``clapkit.caption_spice`` when Java and the SPICE jar exist, else ``None`` with the reason in ``notes``;
  SPIDEr = (CIDEr-D + SPICE) / 2, ``None`` with SPICE.

Inputs are dicts keyed by clip id: one candidate string per clip, a non-empty list of reference strings per clip
(counts may differ between clips).  Results depend on neither the order of clips nor that of references (up to
the rounding of sums; METEOR keeps the first of equally scoring references, as Meteor does, which can matter only
when their statistics differ).

Known differences from the Java toolkit: the tokeniser (``clapkit.caption_tokenizer`` lists them; rare in captions),
METEOR (exact matches only, see above) and SPICE (only with an installed jar).  BLEU, ROUGE-L and CIDEr-D follow
the toolkit's arithmetic step by step, so on the same tokens they agree to rounding.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from clapkit.caption_meteor import best_reference_stats, meteor_score_from_stats, MeteorStats
from clapkit.caption_spice import run_spice, spice_unavailable_reason
from clapkit.caption_tokenizer import ptb_tokenize

__all__ = ["CaptionScores", "score_captions", "bleu", "rouge_l", "cider_d", "meteor_exact", "ngram_counts"]

Tokens = Sequence[str]
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9  # bleu_scorer.py: "so that if guess is 0 still return 0"
_ROUGE_BETA = 1.2  # rouge.py, "updated ... based on discussion with Hovey"
_CIDER_N, _CIDER_SIGMA = 4, 6.0


def ngram_counts(tokens: Tokens, max_n: int = 4) -> Counter:
    """Counts of the 1..max_n-grams of ``tokens`` (tuples as keys), as the toolkit's ``precook``."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n of aligned candidate / reference lists (bleu_scorer.py, option 'closest')."""
    correct, guess = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        max_reference_counts: Counter = Counter()
        for ref in refs:
            max_reference_counts |= ngram_counts(ref, max_n)  # | keeps each n-gram's maximum count
        for ngram, count in ngram_counts(candidate, max_n).items():
            correct[len(ngram) - 1] += min(count, max_reference_counts[ngram])
        for k in range(max_n):
            guess[k] += max(0, len(candidate) - k)
        candidate_length += len(candidate)
        # closest reference length; a tie goes to the shorter reference, as min((|l - c|, l)) does
        reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
    ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for n in range(1, max_n + 1):
        product *= (correct[n - 1] + _BLEU_TINY) / (guess[n - 1] + _BLEU_SMALL)
        scores.append(product ** (1.0 / n) * brevity_penalty)
    return scores


def _lcs_length(a: Tokens, b: Tokens) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Tokens, references: Sequence[Tokens]) -> float:
    """One clip's ROUGE-L F (rouge.py): max precision and max recall over references, beta 1.2."""
    candidate = list(candidate) or [""]  # rouge.py splits "" on " " into one empty token
    precisions, recalls = [], []
    for reference in references:
        reference = list(reference) or [""]
        lcs = _lcs_length(reference, candidate)
        precisions.append(lcs / len(candidate))
        recalls.append(lcs / len(reference))
    precision, recall = max(precisions), max(recalls)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + _ROUGE_BETA**2) * precision * recall / (recall + _ROUGE_BETA**2 * precision)


def _tfidf(counts: Counter, document_frequency: Counter, log_clip_count: float):
    """(per-n weight dicts, per-n norms, bigram count) of one caption's n-gram counts (cider_scorer.counts2vec)."""
    vectors: list[dict] = [{} for _ in range(_CIDER_N)]
    for ngram, term_frequency in counts.items():
        idf = log_clip_count - math.log(max(1.0, document_frequency[ngram]))
        vectors[len(ngram) - 1][ngram] = term_frequency * idf
    norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
    bigram_count = sum(counts[g] for g in vectors[1])  # the toolkit's "length": its n == 1 slot holds 2-grams
    return vectors, norms, bigram_count


def _clipped_similarity(candidate, reference) -> float:
    """Mean over n of the clipped cosine times the length penalty, for one reference (cider_scorer.sim)."""
    (cand_vectors, cand_norms, cand_length), (ref_vectors, ref_norms, ref_length) = candidate, reference
    length_penalty = math.exp(-((cand_length - ref_length) ** 2) / (2 * _CIDER_SIGMA**2))
    per_n = []
    for cand_vector, ref_vector, cand_norm, ref_norm in zip(cand_vectors, ref_vectors, cand_norms, ref_norms):
        dot = sum(min(w, ref_vector.get(g, 0.0)) * ref_vector.get(g, 0.0) for g, w in cand_vector.items())
        if cand_norm != 0 and ref_norm != 0:
            dot /= cand_norm * ref_norm
        per_n.append(dot * length_penalty)
    return sum(per_n) / len(per_n)


def cider_d(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> list[float]:
    """Per-clip CIDEr-D of aligned lists, document frequencies from these clips' references (cider_scorer.py)."""
    reference_counts = [[ngram_counts(ref, _CIDER_N) for ref in refs] for refs in references]
    document_frequency: Counter = Counter()
    for counts_of_clip in reference_counts:
        document_frequency.update(set().union(*counts_of_clip))
    log_clip_count = math.log(len(references))
    scores = []
    for candidate, counts_of_clip in zip(candidates, reference_counts, strict=True):
        cand = _tfidf(ngram_counts(candidate, _CIDER_N), document_frequency, log_clip_count)
        total = sum(_clipped_similarity(cand, _tfidf(c, document_frequency, log_clip_count)) for c in counts_of_clip)
        scores.append(10.0 * total / len(counts_of_clip))
    return scores


def meteor_exact(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> float:
    """Corpus METEOR (exact matches only) from the summed statistics of each clip's best reference."""
    total = MeteorStats()
    for candidate, refs in zip(candidates, references, strict=True):
        total = total + best_reference_stats(candidate, refs)
    return meteor_score_from_stats(total)


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores of a captioning run; ``spice`` / ``spider`` are None when SPICE could not run (see notes)."""

    n_clips: int
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    cider_d: float
    meteor_exact: float
    spice: float | None
    spider: float | None
    cider_d_per_clip: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(asdict(self), indent=indent)


def _checked_inputs(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    """The clip ids, sorted; a ValueError naming the clips when the two dicts disagree or a clip lacks references."""
    missing_references = sorted(set(candidates) - set(references))
    missing_candidates = sorted(set(references) - set(candidates))
    if missing_references or missing_candidates:
        raise ValueError(f"candidate and reference clip ids differ: no references for {missing_references[:10]}, "
                         f"no candidate for {missing_candidates[:10]}")  # fmt: skip
    if not candidates:
        raise ValueError("no clips to score")
    for clip, refs in references.items():
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"clip {clip!r}: references must be a non-empty list of strings, got {refs!r}")
        if not isinstance(candidates[clip], str):
            raise ValueError(f"clip {clip!r}: the candidate must be a string, got {candidates[clip]!r}")
    return sorted(candidates, key=str)


def score_captions(candidates: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   spice_jar: str | os.PathLike | None = None) -> CaptionScores:  # fmt: skip
    """Every metric of ``candidates`` (clip id -> caption) against ``references`` (clip id -> captions).

    ``spice_jar``: the SPICE 1.0 jar (default: $CLAPKIT_SPICE_JAR); SPICE is skipped, with a note, without it."""
    clips = _checked_inputs(candidates, references)
    cand_tokens = [ptb_tokenize(candidates[clip]) for clip in clips]
    ref_tokens = [[ptb_tokenize(ref) for ref in references[clip]] for clip in clips]
    bleu_1, bleu_2, bleu_3, bleu_4 = bleu(cand_tokens, ref_tokens)
    cider_per_clip = cider_d(cand_tokens, ref_tokens)
    cider_mean = sum(cider_per_clip) / len(cider_per_clip)
    notes = ["meteor_exact: METEOR 1.5 formula with exact matches only (no stem/synonym/paraphrase): "
             "lower than Java METEOR, not comparable to published METEOR"]  # fmt: skip
    if len(clips) == 1:
        notes.append("cider_d: one clip gives every n-gram idf log(1) = 0, so CIDEr-D is 0 (as in the toolkit)")
    spice = spider = None
    if reason := spice_unavailable_reason(spice_jar):
        notes.append(f"spice, spider unavailable: {reason}")
    else:
        spice, _ = run_spice(spice_jar, {c: " ".join(t) for c, t in zip(clips, cand_tokens)},
                             {c: [" ".join(r) for r in refs] for c, refs in zip(clips, ref_tokens)})  # fmt: skip
        spider = (cider_mean + spice) / 2
    return CaptionScores(
        n_clips=len(clips), bleu_1=bleu_1, bleu_2=bleu_2, bleu_3=bleu_3, bleu_4=bleu_4,
        rouge_l=sum(rouge_l(c, r) for c, r in zip(cand_tokens, ref_tokens)) / len(clips),
        cider_d=cider_mean, meteor_exact=meteor_exact(cand_tokens, ref_tokens), spice=spice, spider=spider,
        cider_d_per_clip=dict(zip(clips, cider_per_clip)), notes=tuple(notes),
    )  # fmt: skip
