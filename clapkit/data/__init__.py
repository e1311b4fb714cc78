"""Corpus builders (Debian recordings, synthesis), dataset adapters, the manifest and cached arrays."""
