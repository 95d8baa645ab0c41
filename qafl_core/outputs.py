"""Where figures go, so that outputs never clobber each other (issue 11, item 6).

* ``qafl reproduce --profile P`` writes ``figures/P/`` when every notebook finds its subject data, and
  ``figures/P-embedded/`` when any of them falls back to embedded data.  The choice is made before anything
  runs, from the same ``choices`` functions of the figure modules the notebooks call
  (:func:`qafl_core.experiments.planned_choices`), so a run without ``QAFL_DATA_DIR`` can never replace the
  figures of a run on real data, nor a smoke run those of the paper profile.  ``MANIFEST.json`` is per folder.
* A notebook run by hand (Jupyter), by ``jupyter nbconvert --execute`` or by papermill without an explicit
  ``output_dir`` writes to ``<checkout>/notebooks/out/`` (git-ignored), found from this package's location,
  never from the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

from qafl_core import environment


def profile_folder(profile: str, fallback: bool) -> str:
    """``figures/`` sub-folder of a profile's run: ``<profile>``, or ``<profile>-embedded`` when any figure of the
    run used embedded fallback data."""
    return f"{profile}-embedded" if fallback else profile


def checkout_root() -> Path | None:
    """The source checkout this package lives in (with ``notebooks/`` and ``figures/``), or None when installed
    elsewhere (a wheel in site-packages)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file() else None


def default_output_dir() -> Path:
    """Where a notebook writes without an explicit ``output_dir``: ``<checkout>/notebooks/out`` (git-ignored),
    else ``$QAFL_CACHE_DIR/notebooks-out`` (default ``~/.cache/qafl``) — never relative to the working directory."""
    root = checkout_root()
    if root is not None:
        return root / "notebooks" / "out"
    return environment.cache_dir() / "notebooks-out"


def output_folder(output_dir: str | os.PathLike | None) -> str:
    """The notebooks' ``output_dir`` parameter resolved: None -> :func:`default_output_dir` (created)."""
    if output_dir is None:
        out = default_output_dir()
        out.mkdir(parents=True, exist_ok=True)
        return str(out)
    return str(output_dir)
