"""What a trained model trained on: the content hashes of its training clips, saved beside its weights.

A zero-shot number means something only if the evaluation clips were not training clips, and the same recording
often arrives under another name or format (``clapkit.data.fingerprint``).  So the train stage writes, into the
model directory, ``training_index.npy``: the ``clapkit.data.fingerprint`` hash of every clip it trained on (the
prepared ``train`` split, or the samples of its shards, plus the clips the pretrained audio encoder it started
from trained on), and ``config.json`` records that file under ``training_data`` with its sha256 and clip count.
``clapkit.hygiene`` reads it back and refuses zero-shot runs on clips it lists.

The file: a ``.npy`` of shape (clips, 2), dtype big-endian uint64: each row one 128-bit hash (high, low halves),
rows sorted and unique.  16 bytes a clip: 74 MB at the paper's 4.6M clips, loaded with ``allow_pickle=False``, and
the 16 bytes of a row are the hash's own bytes, so a row compares as bytes (``keys``).

Weights whose training data we cannot list (the official msclap checkpoint of ``train.init``, an audio encoder
from a file, the aisfx teacher distilled in pretraining) are named in ``unlisted``: the index is then *partial*,
and evaluation results say so.  Validation clips are not listed: they choose nothing but the learning-rate
plateau steps, and no gradient comes from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .atomic_files import replacing, write_json
from .data.fingerprint import HASH_VERSION
from .file_hash import file_sha256

__all__ = ["INDEX_FILE", "RECORD_KEY", "INDEX_FORMAT", "TrainingData", "hashes_to_array", "keys",
           "iter_shard_hashes", "row_hashes", "training_data", "write_training_index"]  # fmt: skip

INDEX_FILE = "training_index.npy"
RECORD_KEY = "training_data"  # the key of config.json that describes the index
INDEX_FORMAT = "clapkit-training-index/1"
_DTYPE = np.dtype(">u8")
MSCLAP_UNLISTED = ("official msclap weights ({init}): trained by Microsoft on data not ours to list (the paper's "
                   "4.6M audio-text pairs); any evaluation dataset may hold clips of it: training index unknown "
                   "for them")


@dataclass
class TrainingData:
    """The clips a model trained on, as index rows (16 bytes a clip, not a Python string: 4.6M clips stay 74 MB in
    the training process), and the weights whose training data is not listed."""

    index: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), _DTYPE))  # sorted, unique
    unlisted: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the hashes were read, for config.json

    def add(self, hashes: Iterable[str], where: str) -> None:
        """Add clips by hex hash (any iterable: a generator over a 4.6M-line index is never a list)."""
        new = hashes_to_array(hashes, where)
        self.index = keys_to_array(np.union1d(keys(self.index), keys(new))) if len(self.index) else new

    @property
    def hashes(self) -> list[str]:
        """The hex hashes, sorted."""
        return [row.tobytes().hex() for row in self.index]


def hashes_to_array(hashes: Iterable[str], where: str = "hashes") -> np.ndarray:
    """(n, 2) big-endian uint64, sorted and unique, of 32-hex-digit hashes; a malformed one is an error."""
    raw = bytearray()
    for h in hashes:
        if not isinstance(h, str) or len(h) != 32:
            raise ValueError(f"{where}: {h!r} is not a 32-hex-digit clapkit content hash")
        try:
            raw += bytes.fromhex(h)
        except ValueError:
            raise ValueError(f"{where}: {h!r} is not a 32-hex-digit clapkit content hash") from None
    arr = np.frombuffer(bytes(raw), dtype=_DTYPE).reshape(-1, 2)
    return keys_to_array(np.unique(keys(arr)))


def keys(arr: np.ndarray) -> np.ndarray:
    """Rows of an (n, 2) big-endian uint64 index as 16-byte values (the hash's bytes), for sorting and ``np.isin``."""
    return np.ascontiguousarray(arr.astype(_DTYPE, copy=False)).view("V16").reshape(-1)


def keys_to_array(k: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(k).view(_DTYPE).reshape(-1, 2)


def iter_shard_hashes(shard_dirs: str | Path | Sequence[str | Path], split: str = "train") -> Iterator[str]:
    """``content_hash`` of the lines of ``<dir>/samples.jsonl`` (the shard index of ``clapkit shards build``) of each
    shard directory whose ``split`` is ``split`` (default ``train``, the one training reads; a line without a split
    counts), one at a time: a folder built from a dataset's train and test splits trains on the first only, and its
    test split stays evaluable.  A missing file, a line that is not JSON or has no ``content_hash`` is an error
    naming file and line."""
    dirs = [shard_dirs] if isinstance(shard_dirs, (str, Path)) else list(shard_dirs)
    for d in dirs:
        path = Path(d) / "samples.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no per-sample index, so the clips trained on cannot be listed "
                                    f"(build the shards with `clapkit shards build`)")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    sample = json.loads(line)
                    h = sample["content_hash"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{path}:{n}: not a JSON object with a content_hash") from None
                if sample.get("split", split) != split:
                    continue
                yield h


def row_hashes(rows: Sequence[Mapping[str, Any]], where: str, file_hash=None) -> list[str]:
    """The ``content_hash`` of manifest rows; a manifest written before prepare recorded them is hashed from its
    rows' source files (``file_hash(path)``, e.g. ``clapkit.hygiene.FileHashes``), or refused without one."""
    out = []
    for r in rows:
        h = r.get("content_hash")
        if not h:
            if file_hash is None:
                raise ValueError(f"{where}: clip {r.get('id')!r} has no content_hash (a manifest from before "
                                 f"prepare recorded them): rerun the prepare stage")
            try:
                h = file_hash(r["path"])
            except Exception as err:  # AudioReadError, OSError: the reason, with the file
                raise ValueError(f"{where}: clip {r.get('id')!r} has no content_hash (a manifest from before prepare "
                                 f"recorded them) and its file {r['path']} cannot be hashed ({err}): rerun the "
                                 f"prepare stage") from None
        out.append(h)
    return out


def _pretrain_clips(cfg, data: TrainingData) -> None:
    """The clips the pretrained audio encoder trained on (``audio_init``), added to ``data``."""
    from .data.prepare import PreparedCorpus

    source = cfg.pretrain_dir if cfg.audio_init == "pretrain" else cfg.audio_init
    if source == "none":
        return
    config = Path(source) / "config.json"
    info = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    if RECORD_KEY in info:  # a model this train stage saved: its audio encoder trained on its index
        from .hygiene import load_training_index

        index = load_training_index(source)
        data.add([k.tobytes().hex() for k in index.keys], str(index.path))
        data.unlisted += index.unlisted
        data.sources.append(f"{index.path} (train.audio_init)")
        return
    if not str(info.get("format", "")).startswith("clapkit-pretrain"):
        data.unlisted.append(f"train.audio_init {source}: audio-encoder weights whose training data is not listed")
        return
    pre = info.get("pretrain", {})
    if float(pre.get("distill_weight", 0) or 0) > 0:
        data.unlisted.append("pretrain distilled the aisfx teacher (clapkit/aisfx_teacher.py), trained on "
                             "commercial sound-effects libraries not ours to list")
    where = pre.get("prepared")
    if where is None:
        data.unlisted.append(f"{config}: names no prepared corpus: the encoder's training clips are not listed")
    elif not cfg.shards and Path(where).resolve() == Path(cfg.prepared).resolve():
        data.sources.append(f"{where} (train split; pretrain: same corpus)")
    else:  # pretrain's train split, as pretrain.py trains on it
        rows = [r for r in PreparedCorpus(where).rows if r["split"] == "train"]
        data.add(row_hashes(rows, f"{where}/manifest.jsonl"), f"{where}/manifest.jsonl")
        data.sources.append(f"{where} (train split, pretrained audio encoder)")


def training_data(cfg, prepared_train_rows: Sequence[Mapping[str, Any]],
                  model_config: Mapping[str, Any] | None = None) -> TrainingData:  # fmt: skip
    """What a run of ``clapkit.train`` with ``cfg`` (and ``model_config``) trains on: the shards' samples or the
    prepared train split, plus the pretrained encoder's clips; weights of unlisted data (``train.init``, a foreign
    encoder, a packaged pretrained audio tower) named."""
    from .init_weights import parse_init

    data = TrainingData()
    if cfg.shards:  # every folder of the mixture (`clapkit shards build` writes samples.jsonl beside its shards)
        from .data.shards import parse_shard_mixture

        for folder, _ in parse_shard_mixture(cfg.shards):
            data.add(iter_shard_hashes(folder), f"{folder}/samples.jsonl")
            data.sources.append(f"{folder}/samples.jsonl")
    else:
        data.add(row_hashes(prepared_train_rows, f"{cfg.prepared}/manifest.jsonl"), cfg.prepared)
        data.sources.append(f"{cfg.prepared} (train split)")
    if parse_init(cfg.init).kind != "none":  # every weight from the checkpoint: audio_init is superseded
        data.unlisted.append(MSCLAP_UNLISTED.format(init=cfg.init))
    else:
        _pretrain_clips(cfg, data)
        encoder = (model_config or {}).get("audio_encoder")
        # a packaged pretrained audio tower (aisfx): train, or pretrain with tasks none, starts it from its weights
        if isinstance(encoder, Mapping) and encoder.get("pretrained"):
            data.unlisted.append(f"the {encoder.get('name')} audio tower starts from the packaged "
                                 f"{encoder['pretrained']!r} weights, trained on sound-effects libraries not ours "
                                 f"to list")
    return data


def write_training_index(model_dir: str | Path, data: TrainingData) -> dict[str, Any]:
    """Write ``training_index.npy`` into a ``save_pretrained`` directory and record it in its ``config.json``
    (both atomically, the index first); returns the record."""
    model_dir = Path(model_dir)
    arr = data.index
    with replacing(model_dir / INDEX_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    record = {"index": INDEX_FILE, "format": INDEX_FORMAT, "hash": HASH_VERSION,
              "sha256": file_sha256(model_dir / INDEX_FILE), "clips": int(arr.shape[0]),
              "sources": list(data.sources), "unlisted": list(data.unlisted),
              "provenance": "partial" if data.unlisted else "complete"}
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config[RECORD_KEY] = record
    write_json(config_path, config, indent=2)
    return record
