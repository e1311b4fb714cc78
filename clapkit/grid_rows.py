"""The rows of the Table 1 ablation grid (``clapkit.grid``): each a set of params.yaml overrides and its seeds.

A row states every *tower knob* explicitly (``TOWER_KNOBS``: the audio and text encoders, the pretraining tasks, the
freezes and the text tower's learning-rate scale), so it means the same experiment whatever params.yaml's default
towers are: switching the workspace default (say to aisfx + MiniLM fine-tuned) moves which row is the workspace run
(``dvc repro``), not what any row measures.  The other knobs (temperature, batch size) follow params.yaml unless a
row ablates them, so a change of, say, ``train.batch_size`` moves the whole grid with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["KNOBS", "TOWER_KNOBS", "GridRow", "ROWS", "base_knobs", "check_rows", "normalise_knobs", "towers", "with_preset_towers",
           "workspace_row"]

# the knobs every row states: what makes its towers (and their pretraining) what they are
TOWER_KNOBS = ("model.embedded", "model.audio_encoder", "model.text_encoder", "pretrain.tasks", "train.freeze_audio",
               "train.freeze_text", "train.text_lr_scale", "train.max_steps")
# params.yaml keys that define a row (the grid's knobs); a row's values are params.yaml's with its overrides
KNOBS = TOWER_KNOBS + ("train.temperature", "train.learn_temperature", "train.batch_size")
# a knob's value when params.yaml leaves it null or lacks it (runs from before the key existed): None = the preset's
# own tower, which for the embedded preset's config of those runs is HTSAT / GPT-2; nothing frozen, the text tower at
# the full rate.  model.embedded: no stage builds a model without it (config.model_config_from_params), so a run
# lacking it predates the key, whose first value was clap-small-htsat-gpt2 (the config those null towers are) and
# which it names: such a run matches no row (every row states its config) and is listed under "other"
KNOB_DEFAULTS = {"model.embedded": "clap-small-htsat-gpt2", "model.audio_encoder": "htsat", "model.text_encoder": "gpt2",
                 "train.freeze_audio": False, "train.freeze_text": False, "train.text_lr_scale": 1.0}


# The model config every row builds on (its embed_dim, projections, dropout), the towers swapped in by name: stated
# by every row, so that changing params.yaml's model.embedded (the default became the LiT config) moves no row.
BASE_CONFIG = "clap-small-aisfx-minilm"
LIT_CONFIG = "clap-small-aisfx-minilm-lit"  # the same, the text side locked to MiniLM's own space (no projection)


def towers(audio: str, text: str, tasks: str, *, freeze_audio: bool = False, freeze_text: bool = False,
           text_lr_scale: float = 1.0, steps: int = 200, config: str = BASE_CONFIG) -> dict[str, Any]:
    """The tower knobs of a row, all of them (``TOWER_KNOBS``).  ``steps``: the contrastive budget, stated by every
    row because the default (both towers frozen: a step costs ~0.1 s) trains 1000 where an encoder-training row
    trains 200 (~1 s a step)."""
    return {"model.embedded": config, "model.audio_encoder": audio, "model.text_encoder": text, "pretrain.tasks": tasks,
            "train.freeze_audio": freeze_audio, "train.freeze_text": freeze_text, "train.text_lr_scale": text_lr_scale,
            "train.max_steps": steps}


@dataclass(frozen=True)
class GridRow:
    name: str  # as in the paper's Table 1 where the row is one of its encoder pairs
    overrides: Mapping[str, Any]  # every TOWER_KNOBS key, and any other knob the row ablates
    seeds: tuple[int, ...] = (0,)
    table1: str | None = None  # clapkit.tasks.TABLE1_MODELS entry this row corresponds to
    slug: str = ""

    def knobs(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The row's knob values: ``base`` (params.yaml's, see ``base_knobs``) with the row's overrides, except the
        budget knobs ``--tiny`` / ``--set`` pinned (``PINNED``): those win over every row (a tiny grid trains a few
        steps whatever budget a row states)."""
        pinned = base.get(PINNED, ())
        k = {key: v for key, v in base.items() if key != PINNED}
        k.update({key: v for key, v in self.overrides.items() if key not in pinned})
        for key in pinned:  # scaled by the row's own budget: a 1000-step row stays 5x a 200-step one
            if key in self.overrides and isinstance(self.overrides[key], int):
                k[key] = max(1, -(-base[key] * self.overrides[key] // REFERENCE_STEPS))
        return normalise_knobs(k)


HTSAT22_GPT2 = towers("htsat", "gpt2", "all")
# aisfx comes pretrained (its packaged weights): no pretraining of ours (the pretrain stage writes those weights)

# The default and the floor differ by the floor's 0.03 seed-to-seed spread on the transfer test, so they get five
# seeds each (cheap: both towers frozen, features cached) for a paired test with some power.
FLOOR_SEEDS = (0, 1, 2, 3, 4)
ROWS: tuple[GridRow, ...] = (
    GridRow("HTSAT-22 + GPT-2", HTSAT22_GPT2, (0, 1, 2), "HTSAT-22+GPT2", "htsat22-gpt2"),
    GridRow("HTSAT + GPT-2", towers("htsat", "gpt2", "sound_events"), (0, 1, 2), "HTSAT+GPT2", "htsat-gpt2"),
    GridRow("HTSAT-22 + RoBERTa", towers("htsat", "roberta", "all"), (0,), "HTSAT-22+RoBERTa", "htsat22-roberta"),
    GridRow("HTSAT + RoBERTa", towers("htsat", "roberta", "sound_events"), (0,), "HTSAT+RoBERTa", "htsat-roberta"),
    GridRow("no pretraining + GPT-2", towers("htsat", "gpt2", "none"), (0,), None, "none-gpt2"),
    GridRow("HTSAT-22 + GPT-2, fixed temperature 0.07", dict(HTSAT22_GPT2, **{"train.learn_temperature": False}),
            (0,), None, "htsat22-gpt2-fixedtau"),
    GridRow("HTSAT-22 + GPT-2, batch 32", dict(HTSAT22_GPT2, **{"train.batch_size": 32}), (0,), None,
            "htsat22-gpt2-b32"),
    GridRow("CNN14 + BERT", towers("cnn14", "bert", "sound_events"), (0,), "CNN14+BERT", "cnn14-bert"),
    # pretrained towers (issue 15 item 4; the paper's Table 1 compares pretrained encoders)
    GridRow("HTSAT-22 + MiniLM (frozen)", towers("htsat", "minilm", "all", freeze_text=True), (0, 1), None,
            "htsat22-minilm-frozen"),
    GridRow("HTSAT-22 + MiniLM (fine-tuned)", towers("htsat", "minilm", "all", text_lr_scale=0.1), (0, 1), None,
            "htsat22-minilm-ft"),
    GridRow("aisfx + MiniLM, both frozen (floor)",  # only the two projections (and the temperature) train
            towers("aisfx", "minilm", "none", freeze_audio=True, freeze_text=True), FLOOR_SEEDS, None,
            "aisfx-minilm-frozen"),
    GridRow("aisfx (frozen) + MiniLM (fine-tuned)",
            towers("aisfx", "minilm", "none", freeze_audio=True, text_lr_scale=0.1), (0, 1), None, "aisfx-minilm-ft"),
    GridRow("aisfx (frozen) + GPT-2", towers("aisfx", "gpt2", "none", freeze_audio=True), (0,), None, "aisfx-gpt2"),
    GridRow("aisfx + MiniLM, both frozen, 1000 steps",  # the embedded default before LiT (docs/results.md)
            towers("aisfx", "minilm", "none", freeze_audio=True, freeze_text=True, steps=1000), FLOOR_SEEDS, None,
            "aisfx-minilm-frozen-1000"),
    GridRow("aisfx + MiniLM, text space locked (LiT), 1000 steps",  # the embedded default (docs/results.md):
            towers("aisfx", "minilm", "none", freeze_audio=True, freeze_text=True, steps=1000,  # only the audio
                   config=LIT_CONFIG), FLOOR_SEEDS, None, "aisfx-minilm-lit"),  # projection and temperature train
)
FLOOR = "aisfx-minilm-frozen"  # the slug of the floor row: both pretrained towers frozen


def get_dotted(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; ``default`` where a level is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def base_knobs(params: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The knob values every row starts from: params.yaml's, then ``extra`` (``--tiny`` / ``--set``), so that a
    change of params.yaml (say train.batch_size) moves the whole grid with it instead of breaking the matching."""
    base = {k: get_dotted(params, k) for k in KNOBS}
    base.update({k: v for k, v in (extra or {}).items() if k in KNOBS})
    base = with_preset_towers(base, params)
    base[PINNED] = tuple(sorted(k for k in (extra or {}) if k in BUDGET_KNOBS))
    return base


def with_preset_towers(knobs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A null tower knob named: the tower of params.yaml's ``model.<preset>`` config (the embedded default's aisfx /
    minilm, msclap-2023's htsat / gpt2), so that a row naming that tower is the same experiment."""
    from .models.clap import load_model_config

    out = dict(knobs)
    preset = params.get("preset", "embedded")
    name = get_dotted(params, f"model.{preset}")
    if name is None or (out.get("model.audio_encoder") is not None and out.get("model.text_encoder") is not None):
        return out
    cfg = load_model_config(name)
    audio, text = cfg["audio_encoder"], cfg["text_encoder"]
    if out.get("model.audio_encoder") is None and isinstance(audio, Mapping):
        out["model.audio_encoder"] = audio.get("name")
    if out.get("model.text_encoder") is None and isinstance(text, Mapping):
        out["model.text_encoder"] = text.get("pretrained") or text.get("name")
    return out


PINNED = "_pinned"  # in a base: the budget knobs --tiny / --set set, which no row overrides
BUDGET_KNOBS = ("train.max_steps",)  # every row states its budget; a tiny grid still runs a few steps
REFERENCE_STEPS = 200  # the encoder-training rows' budget: --tiny's train.max_steps is per 200 of a row's steps


def packaged_towers() -> set[str]:
    """The towers of ``towers.json`` (any preset) that start from packaged pretrained weights (``pretrained`` in
    their config: aisfx, minilm): the ones ``clapkit.train.resolve_freezes`` freezes when told null."""
    import json

    from .config import TOWERS_FILE

    out = set()
    for preset in json.loads(TOWERS_FILE.read_text(encoding="utf-8")).values():
        if not isinstance(preset, dict):
            continue
        for kind, towers in preset.items():
            for name, tower in towers.items():
                config = tower.get("encoder", tower) if kind == "text" else tower
                if isinstance(config, dict) and config.get("pretrained"):
                    out.add(name)
    return out


PACKAGED_TOWERS = packaged_towers()


def normalise_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Same meaning, same value: a null tower is the preset's own (HTSAT / GPT-2 when embedded); a null freeze is
    what the train stage makes of it (frozen for a packaged tower, ``clapkit.train.resolve_freezes``); any
    ``pretrain.tasks`` of the packaged aisfx tower is none (the stage writes its weights, ``clapkit.pretrain``); a
    missing text learning-rate scale is 1."""
    out = {k: v for k, v in knobs.items() if k != PINNED}
    for key, tower in (("train.freeze_audio", "model.audio_encoder"), ("train.freeze_text", "model.text_encoder")):
        if out.get(key) is None and out.get(tower) in PACKAGED_TOWERS:
            out[key] = True
    for key, default in KNOB_DEFAULTS.items():
        if out.get(key) is None:
            out[key] = default
    if out.get("model.audio_encoder") in PACKAGED_TOWERS and "pretrain.tasks" in out:
        out["pretrain.tasks"] = "none"
    return out


def check_rows(rows: Sequence[GridRow], base: Mapping[str, Any]) -> None:
    """Every row states every tower knob and sets only knobs (so ``summarise`` can match runs to it by params); two
    rows with the same knobs would be one experiment twice (e.g. params.yaml's batch size set to the batch row's):
    refuse, naming them."""
    seen: dict[tuple, str] = {}
    for row in rows:
        missing = [k for k in TOWER_KNOBS if k not in row.overrides]
        unknown = [k for k in row.overrides if k not in KNOBS]
        if missing or unknown:
            raise ValueError(f"grid row {row.name!r}: " + "; ".join(
                ([f"states no {missing} (every row states every tower knob, so that it does not depend on "
                  f"params.yaml's default towers)"] if missing else [])
                + ([f"sets {unknown}, which are not in KNOBS (runs could not be matched to it)"] if unknown else [])))
        key = tuple(sorted(row.knobs(base).items(), key=lambda kv: kv[0]))
        if key in seen:
            raise ValueError(f"grid rows {seen[key]!r} and {row.name!r} have the same params with this params.yaml "
                             f"({dict(key)}); change one of them in clapkit/grid_rows.py ROWS")
        seen[key] = row.name


def workspace_row(rows: Sequence[GridRow], base: Mapping[str, Any]) -> GridRow | None:
    """The row whose knobs are params.yaml's (the workspace run, ``dvc repro``), if one is."""
    own = normalise_knobs(base)
    return next((r for r in rows if r.knobs(base) == own), None)
