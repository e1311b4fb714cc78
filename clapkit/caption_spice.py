"""SPICE through the Java SPICE 1.0 jar, when one is installed; nothing is ever downloaded.

SPICE parses captions into scene graphs with Stanford CoreNLP (the jar's ``lib/`` folder, fetched by the toolkit's
``get_stanford_models.sh``), so it cannot be written in Python.  ``spice_unavailable_reason`` says why it cannot run
(no ``java`` on PATH, no jar given, the jar missing); ``run_spice`` runs it the way pycocoevalcap's
``spice/spice.py`` does: one JSON list of {"image_id", "test", "refs"} on the toolkit's tokens,
``java -jar -Xmx8G spice-1.0.jar IN -out OUT -subset -silent``, and the mean over clips of the 'All' F-score
(pycocoevalcap also passes ``-cache DIR``, which only saves parsing time on a rerun).

This path is not exercised by the tests: no SPICE jar exists on the machines that run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["SPICE_JAR_ENV", "spice_unavailable_reason", "run_spice"]

SPICE_JAR_ENV = "CLAPKIT_SPICE_JAR"


def resolve_spice_jar(spice_jar: str | os.PathLike | None) -> Path | None:
    jar = spice_jar if spice_jar is not None else os.environ.get(SPICE_JAR_ENV)
    return Path(jar) if jar else None


def spice_unavailable_reason(spice_jar: str | os.PathLike | None) -> str | None:
    """None when SPICE can run, else why not."""
    if shutil.which("java") is None:
        return "SPICE needs Java: no 'java' on PATH"
    jar = resolve_spice_jar(spice_jar)
    if jar is None:
        return f"SPICE needs the SPICE 1.0 jar: pass spice_jar or set {SPICE_JAR_ENV} (nothing is downloaded)"
    if not jar.is_file():
        return f"SPICE jar not found at {jar}"
    return None


def run_spice(spice_jar: str | os.PathLike | None, candidates: dict[str, str], references: dict[str, list[str]],
              timeout_s: float = 3600.0) -> tuple[float, dict[str, float]]:  # fmt: skip
    """(mean SPICE F-score, per-clip F-score) of tokenised ``candidates`` (space-joined) against ``references``."""
    jar = resolve_spice_jar(spice_jar)
    if reason := spice_unavailable_reason(jar):
        raise RuntimeError(reason)
    items = [{"image_id": clip, "test": candidates[clip], "refs": references[clip]} for clip in candidates]
    with tempfile.TemporaryDirectory(prefix="clapkit_spice_") as work:
        in_file, out_file = Path(work) / "input.json", Path(work) / "output.json"
        in_file.write_text(json.dumps(items))
        command = ["java", "-jar", "-Xmx8G", str(jar), str(in_file), "-out", str(out_file), "-subset", "-silent"]
        subprocess.run(command, cwd=jar.parent, check=True, timeout=timeout_s)
        results = json.loads(out_file.read_text())
    per_clip = {str(item["image_id"]): float(item["scores"]["All"]["f"]) for item in results}
    return sum(per_clip.values()) / len(per_clip), per_clip
