"""The error types clapkit raises for its own concerns, one per concern, each naming the file it is about.

* ``WeightsError``: model weights that cannot be loaded into the model asked for: an official msclap file
  (``clapkit.msclap_weights``, ``clapkit.clapcap_weights``), a folder written by ``save_pretrained``, or packaged
  pretrained weights whose size or sha256 is not the one clapkit ships (``clapkit.pretrained``).
* ``TrainingStateError``: a training checkpoint (``clapkit.training_state``) that cannot be resumed: unreadable, of
  another run identity, or missing part of the state.

Elsewhere: ``clapkit.audio.AudioReadError`` (an audio file), ``clapkit.data.adapters.DatasetError`` (a dataset
folder), ``clapkit.hygiene.TrainingOverlapError`` (evaluation clips the model trained on).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["TrainingStateError", "WeightsError"]


class WeightsError(ValueError):
    """Weights that cannot be loaded; ``str(err)`` names the file, the reason and every problem found."""

    def __init__(self, path: str | Path, reason: str, details: list[str] | None = None):
        self.path, self.reason, self.details = str(path), reason, list(details or [])
        lines = [f"{self.path}: {reason}"] + [f"  {d}" for d in self.details]
        super().__init__("\n".join(lines))


class TrainingStateError(RuntimeError):
    """A training checkpoint that cannot be used, with the path and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason
