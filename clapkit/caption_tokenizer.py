"""Caption tokenisation as the COCO caption toolkit does it, in Python.

pycocoevalcap (``pycocoevalcap/tokenizer/ptbtokenizer.py``, tylin/coco-caption and salaniz/pycocoevalcap) pipes every
caption through Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` and then drops the tokens in its
``PUNCTUATIONS`` list.  Every caption metric (BLEU, ROUGE-L, CIDEr-D, METEOR, SPICE) scores those tokens, so the
tokeniser decides what counts as a word match.  The Java tokenizer is not available here; ``ptb_tokenize`` is a
Python equivalent for what captions contain:

* lowercase; curly quotes and apostrophes read as straight ones (PTB3 normalisation);
* Penn-Treebank clitics split off: "dog's" -> "dog 's", "they're" -> "they 're", "don't" -> "do n't",
  "can't" -> "ca n't";
* hyphens, slashes and apostrophes inside a word keep it whole ("black-and-white", "and/or", "o'clock");
* numbers keep their separators ("3.5", "1,000", "10:30"), acronyms keep their periods ("u.s."), as do a few
  abbreviations PTB keeps ("mr.", "dr.", "st.", "etc." ...);
* every other non-space symbol is a token of its own; the toolkit's punctuation tokens are then removed.

Known differences from the Java tokenizer, all rare in captions and none changing a match between two captions
(both sides are tokenised alike): PTB3 escapes ("and\\/or", "-LRB-") are not produced (brackets are simply
dropped: whether Java's "-lrb-" survives ``-lowerCase`` and the toolkit's upper-case PUNCTUATIONS was not verified);
PTB's "gonna" -> "gon na", "cannot" -> "can not" and British-to-American respellings are not applied; Java's
abbreviation list is longer than ``_ABBREVIATIONS``.
"""

from __future__ import annotations

import re

__all__ = ["TOOLKIT_PUNCTUATIONS", "ptb_tokenize"]

# pycocoevalcap/tokenizer/ptbtokenizer.py PUNCTUATIONS: tokens removed after PTB tokenisation.  The bracket
# escapes are listed there in upper case; we drop brackets outright (see the module docstring).
TOOLKIT_PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = frozenset("()[]{}")
_ABBREVIATIONS = frozenset(["mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "mt", "no"])
_QUOTE_NORMALISATION = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00b4": "'"})

_TOKEN = re.compile(
    r"""
      (?P<whole>\d+(?:[.,:]\d+)+       # 3.5  1,000  10:30
       | (?:[^\W\d_]\.){2,}            # u.s.  e.g.
       | '(?:s|re|ve|ll|d|m)(?![\w']))  # a clitic already separated by a space: "dog 's"
    | (?P<word>\w(?:[\w'/-]*\w)?\.?)   # a word (its trailing period and clitic decided by _split_word)
    | \.\.\.|--|``|''                  # multi-character punctuation PTB keeps whole
    | \S                               # any other symbol on its own
    """,
    re.VERBOSE,
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def _split_word(word: str) -> list[str]:
    """A word's PTB pieces: a trailing period split off unless an abbreviation, then the clitic split off."""
    pieces: list[str] = []
    if word.endswith("."):
        if word[:-1] in _ABBREVIATIONS:
            return [word]
        word, pieces = word[:-1], ["."]
    clitic = _CLITIC.match(word)
    if clitic and clitic.group(1) not in ("", "'"):
        return [clitic.group(1), clitic.group(2), *pieces]
    return [word, *pieces]


def ptb_tokenize(caption: str) -> tuple[str, ...]:
    """``caption`` as the toolkit's tokens: lowercased PTB tokens without its punctuation tokens."""
    text = caption.replace("\n", " ").translate(_QUOTE_NORMALISATION).lower()
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        word = match.group("word")
        tokens.extend(_split_word(word) if word else [match.group(0)])
    return tuple(t for t in tokens if t not in TOOLKIT_PUNCTUATIONS and t not in _BRACKETS and t != '"')
