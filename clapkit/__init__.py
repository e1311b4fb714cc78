"""clapkit: data preparation, encoder pretraining, contrastive training and evaluation for MS-CLAP 2023."""

__version__ = "0.1.0"

__all__ = ["CLAP", "CaptionModel"]


def __getattr__(name: str):
    # `clapkit.CLAP` without paying for torch/transformers on a bare `import clapkit` (the CLI, the data stages).
    if name == "CLAP":
        from .api import CLAP

        return CLAP
    if name == "CaptionModel":
        from .captioning import CaptionModel

        return CaptionModel
    raise AttributeError(f"module 'clapkit' has no attribute {name!r}")
