"""Pretraining tasks, their examples and their scoring (the ``pretrain`` stage's data side).

* ``build_tasks``: one generation task per label task of the prepared corpus plus the text tasks (caption,
  transcript, title, real or synthesised, yes/no questions); each has one prompt
  ``"question: ... answer:"`` and, per clip, the accepted answers.
* ``Examples``, ``TaskSampler``, ``make_examples``: task-balanced clip draws and the (prompt, answer) token
  sequences a ``PrefixLM`` is trained on.
* ``evaluate_generation``: greedy answers for held-out clips scored by exact match, against chance and against
  the audio-blind answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from .audio import fit_length
from .text import GPT2_EOT_ID, gpt2_bpe
from .stats import exact_task_claims
from .training import Precision

__all__ = ["LABEL_QUESTIONS", "MODES", "Examples", "Task", "TaskSampler", "answer_trie", "answer_vocabulary",
           "build_tasks", "clip_wave", "evaluate_generation", "exact_match", "make_examples", "normalize_answer",
           "prompt_text", "yes_no_question"]

MODES = ("all", "sound_events", "none")

# Question and, for the yes/no task, the noun a label is asked about ("is the spoken language french?").
# A corpus task missing here still becomes a task, with a question made from its name.
LABEL_QUESTIONS = {
    "language": ("what language is spoken?", "spoken language"),
    "keyword": ("what word or phrase is spoken?", "spoken word"),
    "digit": ("what digit is spoken?", "spoken digit"),
    "speaker": ("who is speaking?", "speaker"),
    "gender": ("is the voice male or female?", "voice"),
    "drum": ("what drum is played?", "drum"),
    "instrument": ("what instrument is playing?", "instrument"),
    "instrument_family": ("what family of instrument is playing?", "instrument family"),
    "pitch": ("what note is played?", "note"),
    "velocity": ("how hard is the note played?", "dynamic"),
    "tone": ("what kind of tone or noise is this?", "signal"),
    "sound_event": ("what sound is this?", "sound"),
    "sound_category": ("what kind of sound is this?", "sound category"),
    "emotion": ("what emotion does the voice express?", "emotion"),
    "voice_pack": ("which voice pack is this?", "voice pack"),
    "sample_category": ("what kind of music sample is this?", "sample category"),
}
# Labels that make a clip speech: its text is then a transcript, otherwise a title.
SPEECH_TASKS = ("language", "keyword", "digit", "speaker")
TEXT_QUESTIONS = {
    "caption": "describe the sound.",
    "transcript": "what words are spoken?",
    "title": "what is the title of this sound?",
    "recording": "is this a real recording or synthesised?",
}
YES_NO_TASK = "yes_no"


def prompt_text(question: str) -> str:
    return f"question: {question} answer:"



# --- tasks ---------------------------------------------------------------------------------------------------------

@dataclass
class Task:
    """One generation task: its prompt and, per clip (manifest row index), the accepted answers."""

    name: str
    prompt: str
    answers: dict[int, list[str]]  # row -> answers; training draws one, evaluation accepts any
    classes: int  # distinct answers over the whole corpus (chance = 1 / classes)
    kind: str  # label | text | yes_no


def _fits(tokenizer, text: str, max_tokens: int) -> bool:
    return len(tokenizer.encode(" " + text).ids) <= max_tokens


def build_tasks(rows: Sequence[Mapping[str, Any]], corpus_tasks: Mapping[str, Any], mode: Any,
                max_answer_tokens: int, tokenizer=None) -> list[Task]:
    """The generation tasks the corpus supports, in a fixed order (label tasks sorted, then text tasks).

    ``mode``: ``all``, ``sound_events`` (only ``sound_event``), ``none`` (no task) or a list of task names.
    Answers longer than ``max_answer_tokens`` GPT-2 tokens are left out (long transcripts, long captions).
    """
    tokenizer = tokenizer or gpt2_bpe()
    if mode == "none":
        return []
    tasks: list[Task] = []
    for name in sorted(corpus_tasks):
        if corpus_tasks[name].get("multi_label"):
            continue  # one answer per clip and task here; multi-label tasks would need a list answer
        question = LABEL_QUESTIONS.get(name, (f"what is the {name.replace('_', ' ')}?", ""))[0]
        answers = {i: [r["labels"][name]] for i, r in enumerate(rows)
                   if name in r.get("labels", {}) and _fits(tokenizer, r["labels"][name], max_answer_tokens)}
        if answers:
            tasks.append(Task(name, prompt_text(question), answers, len(corpus_tasks[name]["classes"]), "label"))
    text_answers: dict[str, dict[int, list[str]]] = {name: {} for name in TEXT_QUESTIONS}
    for i, r in enumerate(rows):
        texts = [t for t in r.get("texts", []) if t.strip() and _fits(tokenizer, t, max_answer_tokens)]
        captions = [c for c in r.get("captions", []) if c not in r.get("texts", [])
                    and _fits(tokenizer, c, max_answer_tokens)]
        if captions:
            text_answers["caption"][i] = captions
        if texts:
            speech = any(t in r.get("labels", {}) for t in SPEECH_TASKS)
            text_answers["transcript" if speech else "title"][i] = texts
        if "real" in r:
            text_answers["recording"][i] = ["real recording" if r["real"] else "synthesised"]
    for name, question in TEXT_QUESTIONS.items():
        answers = text_answers[name]
        distinct = {a for accepted in answers.values() for a in accepted}
        if len(distinct) >= 2:
            tasks.append(Task(name, prompt_text(question), answers, len(distinct), "text"))
    label_tasks = [t for t in tasks if t.kind == "label"]
    if label_tasks:
        covered = sorted({i for t in label_tasks for i in t.answers})
        tasks.append(Task(YES_NO_TASK, "", {i: ["yes", "no"] for i in covered}, 2, "yes_no"))
    if mode == "all":
        return tasks
    wanted = ["sound_event"] if mode == "sound_events" else list(mode)
    known = {t.name for t in tasks}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ValueError(f"params.yaml pretrain.tasks: {unknown} not supported by this corpus; supported: {sorted(known)}")
    return [t for t in tasks if t.name in wanted]


def yes_no_question(rows: Sequence[Mapping[str, Any]], row: int, label_tasks: Sequence[Task],
                    classes: Mapping[str, Sequence[str]], rng: random.Random) -> tuple[str, str]:
    """A yes/no question about one of the clip's labels; half of them name the true label, half another class."""
    own = [t for t in label_tasks if row in t.answers]
    task = own[rng.randrange(len(own))]
    truth = task.answers[row][0]
    others = [c for c in classes[task.name] if c != truth]
    ask_true = not others or rng.random() < 0.5
    asked = truth if ask_true else others[rng.randrange(len(others))]
    noun = LABEL_QUESTIONS.get(task.name, ("", task.name.replace("_", " ")))[1]
    return prompt_text(f"is the {noun} {asked}?"), "yes" if ask_true else "no"


# --- answers -------------------------------------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or sentence-final punctuation ("A frog." = "a frog")."""
    return _SPACE.sub(" ", text.lower()).strip().rstrip(".!?").strip()


def exact_match(generated: str, accepted: Iterable[str]) -> bool:
    g = normalize_answer(generated)
    return any(g == normalize_answer(a) for a in accepted)


# --- data ----------------------------------------------------------------------------------------------------------

class Examples:
    """Turns (row, task, answer) triples into the padded ``input_ids`` / ``target_mask`` a ``PrefixLM`` scores."""

    def __init__(self, tokenizer, tasks: Sequence[Task]):
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}
        for t in tasks:
            if t.prompt:
                self.prompt_ids(t.prompt)

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._cache:
            self._cache[prompt] = self.tokenizer.encode(prompt).ids
        return self._cache[prompt]

    def answer_ids(self, answer: str) -> list[int]:
        key = "\0" + answer
        if key not in self._cache:
            self._cache[key] = self.tokenizer.encode(" " + answer).ids + [GPT2_EOT_ID]
        return self._cache[key]

    def batch(self, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, answer) pairs -> right-padded ids (B, L) and the mask of answer + end tokens."""
        seqs = [(self.prompt_ids(p), self.answer_ids(a)) for p, a in pairs]
        length = max(len(p) + len(a) for p, a in seqs)
        ids = torch.full((len(seqs), length), GPT2_EOT_ID, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.bool)
        for i, (p, a) in enumerate(seqs):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            mask[i, len(p) : len(p) + len(a)] = True
        return ids, mask


def answer_vocabulary(tasks: Sequence[Task], examples: Examples) -> list[int]:
    """Every token id any answer of any task can contain, plus the end token."""
    vocab = {GPT2_EOT_ID}
    for t in tasks:
        for accepted in t.answers.values():
            for a in accepted:
                vocab.update(examples.answer_ids(a))
    return sorted(vocab)


def clip_wave(corpus, row: int, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    wave = torch.from_numpy(corpus.waveform(row))
    return fit_length(wave, num_samples, crop="random" if generator is not None else "center", generator=generator)



class TaskSampler:
    """Task-balanced batches: each clip is drawn by picking a task uniformly, then one of its training clips."""

    def __init__(self, tasks: Sequence[Task], train_rows: set[int]):
        self.tasks = [t for t in tasks if t.kind != "yes_no"] or list(tasks)
        self.rows = [sorted(i for i in t.answers if i in train_rows) for t in self.tasks]
        empty = [t.name for t, r in zip(self.tasks, self.rows) if not r]
        if empty:
            raise ValueError(f"pretrain: no training clips for task(s) {empty}")

    def draw(self, n: int, generator: torch.Generator) -> list[tuple[int, str]]:
        """``n`` (row, task it was drawn for) pairs."""
        which = torch.randint(0, len(self.tasks), (n,), generator=generator).tolist()
        picks = torch.rand(n, generator=generator).tolist()
        return [(self.rows[t][int(u * len(self.rows[t]))], self.tasks[t].name) for t, u in zip(which, picks)]


def make_examples(drawn: Sequence[tuple[int, str]], tasks: Sequence[Task], corpus_rows, classes,
                  rng: random.Random, tasks_per_clip: int | None) -> list[tuple[int, str, str, str]]:
    """(clip position in the batch, task, prompt, answer) for the drawn clips: the task each clip was drawn for,
    plus up to ``tasks_per_clip - 1`` more of its tasks at random (None = all); one answer drawn per task."""
    label_tasks = [t for t in tasks if t.kind == "label"]
    out = []
    for pos, (row, drawn_for) in enumerate(drawn):
        own = [t for t in tasks if row in t.answers]
        if tasks_per_clip is not None and len(own) > tasks_per_clip:
            first = next(t for t in own if t.name == drawn_for)
            others = [t for t in own if t is not first]
            picked = {first.name, *(t.name for t in rng.sample(others, tasks_per_clip - 1))}
            own = [t for t in own if t.name in picked]
        for t in own:
            if t.kind == "yes_no":
                prompt, answer = yes_no_question(corpus_rows, row, label_tasks, classes, rng)
            else:
                accepted = t.answers[row]
                prompt, answer = t.prompt, accepted[rng.randrange(len(accepted))]
            out.append((pos, t.name, prompt, answer))
    return out



# --- evaluation ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_generation(model, corpus, tasks: Sequence[Task], examples: Examples, cfg, seed: int, precision: Precision,
                        split: str = "test") -> tuple[dict, list[dict]]:
    """Exact-match accuracy of greedy answers on ``split`` clips, per task, and example generations.

    ``accuracy``: greedy decoding constrained to the answers the task had in training (a trie; yes/no for the
    yes/no task), so the score measures what the audio tells the model, not whether a small LM trained from
    scratch for a few minutes has learnt which vocabulary belongs to which prompt; ``free_accuracy``: greedy
    decoding over the whole output vocabulary.

    Up to ``eval_clips_per_task`` clips per task, drawn with a fixed seed; the yes/no questions are drawn with it
    too, so every run asks the same questions.  Chance = 1 / distinct answers (classes).  ``audio_blind``: the
    accuracy of always giving the task's most frequent training answer (what a model that ignores the audio and
    knows only the answer prior scores on these clips).  ``significant`` / ``above_audio_blind``: exact one-sided
    binomial tests against chance and against the audio-blind rate at one-sided 3 sigma, with the Wilson 95%
    interval and both p-values (``clapkit.stats.exact_task_claims``).
    """
    model.eval()
    rng = random.Random(f"{seed}-eval")
    label_tasks = [t for t in tasks if t.kind == "label"]
    classes = {name: spec["classes"] for name, spec in corpus.tasks.items()}
    train_answers = {t.name: {normalize_answer(a) for i, acc in t.answers.items()
                              if corpus.rows[i]["split"] == "train" for a in acc} for t in tasks}
    chosen: dict[str, list[int]] = {}
    for t in tasks:
        rows = sorted(i for i in t.answers if corpus.rows[i]["split"] == split)
        if len(rows) > cfg.eval_clips_per_task:
            rows = sorted(rng.sample(rows, cfg.eval_clips_per_task))
        chosen[t.name] = rows
    needed = sorted({i for rows in chosen.values() for i in rows})
    n_samples = model.frontend_cfg.clip_samples
    embeddings: dict[int, torch.Tensor] = {}
    for start in range(0, len(needed), cfg.eval_batch_size):
        part = needed[start : start + cfg.eval_batch_size]
        waves = torch.stack([clip_wave(corpus, r, n_samples, None) for r in part])
        for r, e in zip(part, model.embed(waves.to(precision.device), precision)):
            embeddings[r] = e
    metrics, generations = {}, []
    for t in tasks:
        # Constrained decoding: the answers this task had in training (yes/no for yes_no) form a trie that
        # greedy decoding must stay in, so a clip is not answered with another task's vocabulary.
        admissible = ["yes", "no"] if t.kind == "yes_no" else sorted(
            {a for i, acc in t.answers.items() if corpus.rows[i]["split"] == "train" for a in acc})
        trie = answer_trie(examples.answer_ids(a) for a in admissible)
        rows = chosen[t.name]
        if not rows:
            continue
        queries = []
        for r in rows:
            if t.kind == "yes_no":
                prompt, answer = yes_no_question(corpus.rows, r, label_tasks, classes, rng)
                queries.append((r, prompt, [answer]))
            else:
                queries.append((r, t.prompt, t.answers[r]))
        longest = max(len(examples.answer_ids(a)) for _, _, acc in queries for a in acc)
        max_new = min(cfg.max_answer_tokens, longest + 2) + 1  # room for a longer wrong answer, and the end token
        correct = free_correct = 0
        for start in range(0, len(queries), cfg.eval_batch_size):
            part = queries[start : start + cfg.eval_batch_size]
            emb = torch.stack([embeddings[r] for r, _, _ in part])
            prompts = [examples.prompt_ids(p) for _, p, _ in part]
            with precision.autocast():
                out = model.prefix_lm.generate(emb, prompts, max_new, GPT2_EOT_ID, tries=[trie] * len(part))
                free = model.prefix_lm.generate(emb, prompts, max_new, GPT2_EOT_ID)
            for (r, prompt, accepted), ids, free_ids in zip(part, out, free):
                text = examples.tokenizer.decode(ids, skip_special_tokens=True).strip()
                free_text = examples.tokenizer.decode(free_ids, skip_special_tokens=True).strip()
                ok = exact_match(text, accepted)
                correct += ok
                free_correct += exact_match(free_text, accepted)
                if sum(g["task"] == t.name for g in generations) < cfg.examples_per_task:
                    generations.append({"task": t.name, "clip": corpus.rows[r]["id"], "prompt": prompt,
                                        "answer": accepted[0] if len(accepted) == 1 else accepted,
                                        "generated": text, "generated_free": free_text, "correct": bool(ok)})
        n = len(queries)
        accuracy = correct / n
        chance = 1.0 / max(t.classes, 1)
        prior = {}
        for i, acc in t.answers.items():
            if corpus.rows[i]["split"] == "train" and t.kind != "yes_no":
                prior[normalize_answer(acc[0])] = prior.get(normalize_answer(acc[0]), 0) + 1
        if t.kind == "yes_no":  # trained on balanced questions: the test majority is the stricter baseline
            prior = {"yes": sum(acc == ["yes"] for _, _, acc in queries), "no": sum(acc == ["no"] for _, _, acc in queries)}
        commonest = min(prior, key=lambda a: (-prior[a], a))  # ties: alphabetical, so the baseline is fixed
        blind = sum(any(normalize_answer(a) == commonest for a in acc) for _, _, acc in queries) / n
        seen = sum(any(normalize_answer(a) in train_answers[t.name] for a in acc) for _, _, acc in queries) / n
        metrics[t.name] = {"accuracy": round(accuracy, 4), "chance": round(chance, 4),
                           "free_accuracy": round(free_correct / n, 4), "classes": t.classes,
                           "clips": n, "answer_seen_in_train": round(seen, 4),
                           "audio_blind": round(blind, 4), **exact_task_claims(correct, n, chance, blind)}
    return metrics, generations


def answer_trie(sequences: Iterable[Sequence[int]]) -> dict:
    """Nested dict ``{token: {token: ...}}`` of token sequences (each ends with the end token, whose node is ``{}``)."""
    root: dict = {}
    for seq in sequences:
        node = root
        for token in seq:
            node = node.setdefault(int(token), {})
    return root
