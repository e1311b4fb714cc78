"""clapkit: data preparation, encoder pretraining, contrastive training and evaluation for MS-CLAP 2023."""

__version__ = "0.1.0"
