"""Real recordings shipped inside Debian packages (data-sources §1 and §1b).

``fetch.py`` downloads and unpacks packages into a cache outside the repository; ``recordings.py`` (speech,
music, game and UI sounds) and ``environmental.py`` (animals, everyday sounds, footsteps, weather...) hold one
extractor per package, registered with ``@debian_source``.  An extractor copies audio files out of the unpacked
package into the corpus and returns one ``ClipRecord`` per file.
"""

from .fetch import SOURCES, DebianSource, debian_source, fetch_package  # noqa: F401
