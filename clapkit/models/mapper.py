"""Audio embedding -> prefix of a causal language model: the mapper of clapcap / Pengi, and a prefix LM around it.

``TransformerMapper`` (ClipCap's "transformer" mapping, as in msclap's clapcap): one linear layer turns the clip
embedding into ``prefix_length`` vectors of the LM's width; ``prefix_length`` learned constant vectors are
appended; a small transformer encoder mixes the two sets, and its outputs at the constant positions are the
prefix.  The constants act as queries that read the audio tokens, so the prefix can be longer than what one
linear layer would comfortably produce.

``PrefixLM`` puts the mapper in front of a GPT-2 language model (``transformers.GPT2LMHeadModel`` built from a
config, never from a hub) and does the two things pretraining needs:

* ``loss``: next-token cross-entropy on the *answer* tokens only of ``[prefix] [prompt] [answer <|endoftext|>]``
  sequences (the prompt is given, not learned), one mean per example so long answers do not outweigh short ones;
* ``generate``: greedy decoding of the answer after ``[prefix] [prompt]``, stopping at ``<|endoftext|>``.

``prefix_position`` says where the audio prefix sits.  ``start`` is Pengi's layout, ``[prefix] [prompt] [answer]``:
the first answer token is predicted at the last *prompt* token, which reaches the audio only through attention
that a randomly initialised LM has yet to learn; on the embedded corpus it first learns each task's answer prior
from the prompt and reads the audio very slowly (gender 0.65 after 400 steps, where a linear head on the same
encoder reaches 0.99 in 25).  ``after_prompt``, ``[prompt] [prefix] [answer]``, predicts the first answer token
at the last *prefix* position: the mapper's output reaches the LM head through the residual stream, and the
task comes in by attention from the prefix to the prompt.

Sequences in a batch have different lengths and are *right*-padded.  GPT-2 attention is causal, so a real
token never sees the padding to its right and positions count from 0 for every row alike: no attention mask
is needed, and the padded positions are simply never read.  The LM head (a 50,257-way matmul) is applied only
at the positions whose next token is scored, not at every position.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

__all__ = ["PREFIX_POSITIONS", "PrefixLM", "TransformerMapper", "build_lm"]

PREFIX_POSITIONS = ("start", "after_prompt")


class TransformerMapper(nn.Module):
    """(B, in_dim) clip embedding -> (B, prefix_length, lm_dim) prefix.

    ``num_layers=0`` is ClipCap's simplest mapping: the prefix is the linear layer's output itself (no learned
    constants, no transformer), the shortest path from the audio to the LM.
    """

    def __init__(self, in_dim: int, lm_dim: int, prefix_length: int, num_layers: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        if prefix_length < 1:
            raise ValueError(f"prefix_length must be >= 1, got {prefix_length}")
        if num_layers < 0:
            raise ValueError(f"mapper layers must be >= 0, got {num_layers}")
        if lm_dim % num_heads:
            raise ValueError(f"mapper: LM width {lm_dim} is not divisible by {num_heads} heads")
        self.prefix_length, self.lm_dim = prefix_length, lm_dim
        # Standardise each feature of the clip embedding over the batch (running statistics at inference).  The
        # pooled output of a freshly initialised encoder is mostly a component shared by all clips (norm ~10,
        # spread across clips ~0.4 for the embedded HTSAT); passed on as is it gives a near-constant prefix that
        # the LM learns to ignore, answering every clip with the task's most frequent answer.
        self.input_norm = nn.BatchNorm1d(in_dim)
        self.linear = nn.Linear(in_dim, prefix_length * lm_dim)
        # Small, like GPT-2's token embeddings (std 0.02): the query positions' outputs are then the audio-dependent
        # attention terms, not a large constant shared by every clip (std 1 made the prefix ~98 % constant and the
        # LM answered every clip alike).
        self.num_layers = num_layers
        if num_layers == 0:
            return
        self.prefix_const = nn.Parameter(0.02 * torch.randn(prefix_length, lm_dim))
        layer = nn.TransformerEncoderLayer(lm_dim, num_heads, int(lm_dim * mlp_ratio), dropout, activation="relu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        b = embedding.shape[0]
        audio_tokens = self.linear(self.input_norm(embedding)).view(b, self.prefix_length, self.lm_dim)
        if self.num_layers == 0:
            return audio_tokens
        queries = self.prefix_const.unsqueeze(0).expand(b, -1, -1).to(audio_tokens.dtype)
        return self.transformer(torch.cat([audio_tokens, queries], dim=1))[:, self.prefix_length:]


def build_lm(fields: Mapping[str, Any]) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 LM from config fields (``GPT2Config`` names; omitted = GPT-2 base)."""
    known = set(GPT2Config().to_dict())
    unknown = sorted(set(fields) - known)
    if unknown:  # GPT2Config would keep a misspelt size as a silent attribute
        raise ValueError(f"unknown GPT2Config field(s) {unknown}")
    cfg = GPT2Config(**dict(fields), attn_implementation="sdpa", use_cache=False)
    return GPT2LMHeadModel(cfg)


class PrefixLM(nn.Module):
    """Mapper + GPT-2 LM: scores and generates answers conditioned on a clip embedding and a prompt.

    ``output_vocab`` (sorted token ids, or None for the whole vocabulary) restricts the softmax to the tokens the
    answers can contain.  With GPT-2's 50,257 tokens and a 256-wide LM, the output layer alone costs ~10x the
    small audio encoder per answer token on a CPU; the answers of the embedded corpus use ~3.4k distinct
    tokens.  The LM, its tied embeddings and the BPE are unchanged; only the candidates of the next-token
    softmax (in training and in greedy decoding alike) are the answer vocabulary.
    """

    def __init__(self, audio_dim: int, lm_fields: Mapping[str, Any], prefix_length: int, mapper_layers: int = 2,
                 mapper_heads: int = 4, mapper_dropout: float = 0.0, freeze_lm: bool = False,
                 output_vocab: Sequence[int] | None = None, prefix_position: str = "start"):
        super().__init__()
        if prefix_position not in PREFIX_POSITIONS:
            raise ValueError(f"prefix_position must be one of {PREFIX_POSITIONS}, got {prefix_position!r}")
        self.prefix_position = prefix_position
        self.lm = build_lm(lm_fields)
        width = self.lm.config.n_embd
        self.mapper = TransformerMapper(audio_dim, width, prefix_length, mapper_layers, mapper_heads,
                                        dropout=mapper_dropout)
        self.freeze_lm = freeze_lm
        if freeze_lm:  # Pengi's setting: only the mapper (and the audio encoder) learn to steer a fixed LM
            self.lm.requires_grad_(False)
        vocab_size = self.lm.config.vocab_size
        if output_vocab is None:
            output_vocab = range(vocab_size)
        ids = torch.tensor(sorted(set(int(i) for i in output_vocab)), dtype=torch.long)
        if ids.numel() == 0 or ids[0] < 0 or ids[-1] >= vocab_size:
            raise ValueError(f"output_vocab must be non-empty token ids below {vocab_size}")
        self.register_buffer("output_vocab", ids)
        # token id -> position in output_vocab (-1: not a candidate); rebuilt from output_vocab, so not saved
        position = torch.full((vocab_size,), -1, dtype=torch.long)
        position[ids] = torch.arange(ids.numel())
        self.register_buffer("vocab_position", position, persistent=False)

    def train(self, mode: bool = True) -> "PrefixLM":
        super().train(mode)
        if self.freeze_lm:
            self.lm.eval()  # a frozen LM also keeps its dropout off
        return self

    @property
    def prefix_length(self) -> int:
        return self.mapper.prefix_length

    @property
    def max_positions(self) -> int:
        return self.lm.config.n_positions

    def _embed(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.lm.transformer.wte(ids).to(dtype)

    def _logits(self, states: torch.Tensor) -> torch.Tensor:
        """Next-token logits over ``output_vocab`` (the tied GPT-2 head, restricted to the candidate rows)."""
        head = self.lm.lm_head.weight
        if self.output_vocab.numel() != head.shape[0]:
            head = head[self.output_vocab]
        return F.linear(states, head.to(states.dtype)).float()

    def _check_length(self, total: int) -> None:
        if total > self.max_positions:
            raise ValueError(f"prefix + tokens = {total} positions exceed the LM's {self.max_positions} "
                             "(raise lm.n_positions or lower max_answer_tokens)")

    def loss(self, audio_embedding: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Per-example mean cross-entropy (B,) of the tokens where ``target_mask`` is true.

        ``input_ids`` (B, L): prompt + answer + end token, right-padded; ``target_mask`` (B, L) marks the answer
        and end tokens (each predicted from the hidden state one position earlier; the first answer token from
        the last prompt token, or the last prefix vector with ``after_prompt``; the prompt must not be empty).
        """
        prefix = self.mapper(audio_embedding)
        b, length = input_ids.shape
        p = prefix.shape[1]
        self._check_length(p + length)
        rows, cols = target_mask.nonzero(as_tuple=True)
        if (cols == 0).any():
            raise ValueError("a target token at position 0 has no prompt token before it")
        counts = target_mask.sum(dim=1)
        if (counts == 0).any():
            raise ValueError("an example has no target tokens")
        tokens = self._embed(input_ids, prefix.dtype)
        if self.prefix_position == "start":
            embeds = torch.cat([prefix, tokens], dim=1)
            shift = torch.full((b, length), p, dtype=torch.long, device=input_ids.device)
        else:  # [prompt] [prefix] [answer ...]: tokens from the first target on move right by the prefix length
            prompt_len = target_mask.int().argmax(dim=1)  # the first target column of each row
            col = torch.arange(length, device=input_ids.device)
            shift = (col[None, :] >= prompt_len[:, None]).long() * p
            embeds = tokens.new_zeros(b, p + length, tokens.shape[-1])
            row_index = torch.arange(b, device=input_ids.device)[:, None]
            embeds[row_index, col[None, :] + shift] = tokens
            embeds[row_index, prompt_len[:, None] + torch.arange(p, device=input_ids.device)[None, :]] = prefix
        hidden = self.lm.transformer(inputs_embeds=embeds).last_hidden_state
        targets = self.vocab_position[input_ids[rows, cols]]
        if (targets < 0).any():
            raise ValueError("an answer token is not in the output vocabulary")
        states = hidden[rows, cols + shift[rows, cols] - 1]  # the state that predicts token (row, col)
        token_loss = F.cross_entropy(self._logits(states), targets, reduction="none")
        per_example = torch.zeros(input_ids.shape[0], device=token_loss.device).index_add_(0, rows, token_loss)
        return per_example / counts

    @torch.no_grad()
    def generate(self, audio_embedding: torch.Tensor, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 eos_id: int, tries: Sequence[dict | None] | None = None) -> list[list[int]]:
        """Greedy answers (token ids, without the end token) for each (clip embedding, prompt ids) row.

        Rows are decoded in groups of equal prompt length, each with a KV cache: no padding, no position
        bookkeeping, one token per row per step.  A row stops at ``eos_id`` or after ``max_new_tokens``.

        ``tries`` (optional, one per row): constrained decoding.  A trie is a nested dict ``{token id: subtrie}``
        of the row's admissible answers, each ending with ``eos_id``; at every step only the tokens that keep
        the answer inside the trie compete for the argmax.  ``None`` leaves a row free.
        """
        if audio_embedding.shape[0] != len(prompts):
            raise ValueError(f"{audio_embedding.shape[0]} embeddings for {len(prompts)} prompts")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        out: list[list[int]] = [[] for _ in prompts]
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        for length, rows in sorted(groups.items()):
            ids = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=audio_embedding.device)
            group_tries = [tries[i] for i in rows] if tries is not None else None
            answers = self._generate_group(audio_embedding[rows], ids, max_new_tokens, eos_id, group_tries)
            for i, answer in zip(rows, answers):
                out[i] = answer
        return out

    def _allowed(self, nodes: Sequence[dict | None], eos_id: int) -> torch.Tensor:
        """(B, V) bool: the candidates each row's trie node admits (all of them for a free row)."""
        allowed = torch.zeros(len(nodes), self.output_vocab.numel(), dtype=torch.bool, device=self.output_vocab.device)
        for i, node in enumerate(nodes):
            if node is None:
                allowed[i] = True
                continue
            ids = torch.tensor(list(node) or [eos_id], dtype=torch.long, device=allowed.device)
            positions = self.vocab_position[ids]
            allowed[i, positions[positions >= 0]] = True
        return allowed

    def _generate_group(self, audio_embedding: torch.Tensor, ids: torch.Tensor, max_new_tokens: int,
                        eos_id: int, tries: Sequence[dict | None] | None = None) -> list[list[int]]:
        prefix = self.mapper(audio_embedding)
        self._check_length(prefix.shape[1] + ids.shape[1] + max(max_new_tokens - 1, 0))
        prompt = self._embed(ids, prefix.dtype)
        embeds = torch.cat([prefix, prompt] if self.prefix_position == "start" else [prompt, prefix], dim=1)
        b = ids.shape[0]
        generated = torch.full((b, max_new_tokens), eos_id, dtype=torch.long, device=ids.device)
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        past = None
        for step in range(max_new_tokens):
            o = self.lm.transformer(inputs_embeds=embeds, past_key_values=past, use_cache=True)
            past = o.past_key_values
            logits = self._logits(o.last_hidden_state[:, -1])
            if tries is not None:
                logits = logits.masked_fill(~self._allowed(tries, eos_id), float("-inf"))
            next_ids = self.output_vocab[logits.argmax(dim=-1)]
            if tries is not None:  # follow each row's trie (an exhausted or finished row stays at its end)
                tries = [None if node is None else node.get(int(t), {}) for node, t in zip(tries, next_ids)]
            generated[:, step] = torch.where(done, torch.full_like(next_ids, eos_id), next_ids)
            done |= next_ids == eos_id
            if bool(done.all()):
                break
            embeds = self._embed(next_ids[:, None], prefix.dtype)
        answers = []
        for row in generated.tolist():
            answers.append(row[: row.index(eos_id)] if eos_id in row else row)
        return answers
