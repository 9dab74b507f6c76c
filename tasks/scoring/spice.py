"""SPICE (Anderson et al. 2016) through pycocoevalcap's ``spice-1.0.jar``, where it can run.

SPICE parses captions into scene graphs with Stanford CoreNLP **3.6.0**
(``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar`` in
``pycocoevalcap/spice/lib/``). No package registry ships those jars and pycocoevalcap
downloads them from nlp.stanford.edu on first use, which fails offline. So:

* :func:`spice_status` says whether SPICE can run here and, if not, why and what to install.
  The tasks report ``spice`` and ``spider`` as unavailable with that reason (never as 0), and
  asking for a SPICE-based reward raises :class:`~backends.errors.RlgfError`.
* :func:`spice_scores` never downloads: it runs the jar only when the CoreNLP jars are
  already in place. It writes its input/output files to a private temporary folder and its
  parse cache to ``cache_dir("spice")`` (pycocoevalcap would write both into its own package
  folder). On Java 9+ it opens the JDK packages SPICE's cache serializer reaches into
  (without ``--add-opens`` it dies with ``InaccessibleObjectException`` on Java 17).

The per-caption score is the F-score of the ``All`` tuple category, as in pycocoevalcap.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from backends.errors import RlgfError
from tasks.scoring.coco_metrics import JAVA_HINT, java_info, pycocoevalcap_dir

CORENLP_VERSION = "3.6.0"
CORENLP_JARS = (f"stanford-corenlp-{CORENLP_VERSION}.jar", f"stanford-corenlp-{CORENLP_VERSION}-models.jar")
CORENLP_URL = "https://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip"
#: JDK packages SPICE (FST serialization of its cache) reflects into
_OPENS = ("java.base/java.lang", "java.base/java.util", "java.base/java.math", "java.base/java.net",
          "java.base/java.text", "java.base/java.io", "java.base/java.util.concurrent")  # fmt: skip


def spice_dir() -> Path:
    return pycocoevalcap_dir() / "spice"


def install_hint(lib: Path | None = None) -> str:
    where = str(lib) if lib is not None else "<site-packages>/pycocoevalcap/spice/lib"
    return (
        "no package registry ships it; online, run "
        "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'`, "
        f"or download {CORENLP_URL} and copy {CORENLP_JARS[0]} and {CORENLP_JARS[1]} into {where}"
    )


def spice_status() -> tuple[bool, str]:
    """``(True, "")`` when SPICE can run here, else ``(False, reason with what to install)``."""
    try:
        folder = spice_dir()
    except RlgfError as exc:
        return False, str(exc)
    jar = folder / "spice-1.0.jar"
    if not jar.is_file():
        return False, f"spice-1.0.jar is missing from {folder} (reinstall pycocoevalcap==1.2)"
    lib = folder / "lib"
    missing = [name for name in CORENLP_JARS if not (lib / name).is_file()]
    if missing:
        return False, (
            f"SPICE needs Stanford CoreNLP {CORENLP_VERSION}, which is not installed "
            f"({' and '.join(missing)} not in {lib}): " + install_hint(lib)
        )
    java, _, reason = java_info()
    if java is None:
        return False, f"SPICE needs Java: {reason}; {JAVA_HINT}"
    return True, ""


def require_spice(what: str = "SPICE") -> None:
    ok, reason = spice_status()
    if not ok:
        raise RlgfError(f"{what} is unavailable: {reason}")


def spice_command(java: str, major: int, jar: Path, in_file: Path, out_file: Path, cache: Path | None) -> list[str]:
    cmd = [java]
    if major >= 9:
        for package in _OPENS:
            cmd += ["--add-opens", f"{package}=ALL-UNNAMED"]
    cmd += ["-jar", "-Xmx8G", str(jar), str(in_file)]
    if cache is not None:
        cmd += ["-cache", str(cache)]
    cmd += ["-out", str(out_file), "-subset", "-silent"]
    return cmd


def parse_output(results: list, n: int) -> list[float]:
    """Per-caption ``All`` F-scores from SPICE's JSON output, in ``image_id`` order 0..n-1."""
    by_id: dict[int, float] = {}
    for item in results:
        try:
            value = item["scores"]["All"]["f"]
            by_id[int(item["image_id"])] = float(value) if value is not None else math.nan
        except (KeyError, TypeError, ValueError):
            continue
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        raise RlgfError(f"SPICE returned no score for {len(missing)} of {n} captions")
    return [by_id[i] for i in range(n)]


def spice_scores(hyps: Sequence[str], refs_list: Sequence[Sequence[str]], *, use_cache: bool = True,
                 timeout: float | None = None) -> list[float]:  # fmt: skip
    """SPICE F-score per hypothesis against its references (texts as given: tokenize first)."""
    if len(hyps) != len(refs_list):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs_list)} reference lists")
    if not hyps:
        return []
    require_spice()
    java, major, _ = java_info()
    jar = spice_dir() / "spice-1.0.jar"
    cache = None
    if use_cache:
        from backends.cache import cache_dir

        cache = cache_dir("spice")
    data = [{"image_id": i, "test": str(h), "refs": [str(r) for r in refs]} for i, (h, refs) in enumerate(zip(hyps, refs_list))]
    with tempfile.TemporaryDirectory(prefix="rlgf-spice-") as tmp:
        in_file, out_file = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_file.write_text(json.dumps(data), encoding="utf-8")
        cmd = spice_command(java, major, jar, in_file, out_file, cache)
        try:
            proc = subprocess.run(cmd, cwd=str(jar.parent), capture_output=True, timeout=timeout,
                                  env={**os.environ, "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8")})  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise RlgfError(f"SPICE could not run: {exc}", hint=JAVA_HINT) from exc
        if proc.returncode != 0 or not out_file.is_file():
            tail = proc.stderr.decode("utf-8", errors="replace").strip()[-800:]
            raise RlgfError(
                f"SPICE failed (exit status {proc.returncode})" + (f": {tail}" if tail else ""),
                hint="SPICE 1.0 is known to work with Java 8 and 11; " + install_hint(jar.parent / "lib"),
            )
        results = json.loads(out_file.read_text(encoding="utf-8"))
    return parse_output(results, len(hyps))
