"""The project's documentation (``docs/``) is self-contained and every reference to it resolves.

* No tracked text file names the background notes the project was written from (they are not part of the
  repository); references go to ``docs/*.md`` or to the paper.
* Every relative Markdown link in a tracked ``.md`` file points at an existing file, and at an existing heading
  when it has an ``#anchor``; every ``docs/<page>.md#anchor`` written anywhere (docstrings, notebooks, YAML
  comments) names an existing page and heading.  Anchors follow GitHub's rule (lower case, punctuation dropped,
  spaces to hyphens, ``-1``, ``-2`` ... for repeated headings).
"""
from __future__ import annotations

import re
import sys
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# assembled from parts so that this file does not itself contain the names it forbids
_FORBIDDEN = [stem + ".md" for stem in ("PAPER", "DESIGN", "DATA", "BASELINES", "STYLE-STUDY")]
_FORBIDDEN_RE = re.compile("|".join([re.escape(n) for n in _FORBIDDEN]
                                    + [r"\b(?:PAPER|DESIGN|BASELINES) §", re.escape("shared/" + "docs/")]))
_LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DOC_REF_RE = re.compile(r"(?<![\w/.-])(?:\.\./)*docs/([\w.-]+\.md)(#[\w-]+)?")
_FENCE_RE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)


def tracked_files() -> list[Path]:
    """Files git tracks or would track (untracked files that are not ignored count: they are about to be)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    this = Path(__file__).resolve()          # holds planted faults for the checkers' own tests
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file() and (ROOT / p) != this]


def read_text(path: Path) -> str | None:
    """The file's text, or None for binary files (NUL bytes or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text: inline code/emphasis markers and punctuation dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # [text](link) -> text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text (ATX headings outside fenced code)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _FENCE_RE.sub("", markdown).splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def forbidden_mentions(path: Path, text: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in _FORBIDDEN_RE.finditer(text)]


def broken_links(md_path: Path, text: str) -> list[str]:
    """Relative links of a Markdown file whose target file or heading does not exist."""
    bad = []
    for m in _LINK_RE.finditer(_FENCE_RE.sub("", text)):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/"):
            continue                                    # absolute URL, mailto:, site-absolute
        path_part, _, anchor = target.partition("#")
        dest = (md_path.parent / path_part).resolve() if path_part else md_path
        where = f"{md_path.relative_to(ROOT)}: ({target})"
        if not dest.exists():
            bad.append(f"{where}: no file {path_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return bad


def broken_doc_refs(path: Path, text: str, docs_dir: Path) -> list[str]:
    """``docs/<page>.md[#anchor]`` references (in any text) to a missing page or heading."""
    bad = []
    for m in _DOC_REF_RE.finditer(text):
        page, anchor = docs_dir / m.group(1), (m.group(2) or "")[1:]
        if not page.is_file():
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}: no page docs/{m.group(1)}")
        elif anchor and anchor not in anchors(page.read_text(encoding="utf-8")):
            bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}: no heading #{anchor}")
    return bad


# ---------------------------------------------------------------------------------------------- the checks
def test_no_file_names_the_background_notes():
    bad = []
    for path in tracked_files():
        text = read_text(path)
        if text is not None:
            bad += forbidden_mentions(path, text)
    assert not bad, "references to files that are not in the repository:\n" + "\n".join(bad)


def test_markdown_links_resolve():
    md_files = [p for p in tracked_files() if p.suffix == ".md"]
    assert ROOT / "README.md" in md_files and ROOT / "docs" / "README.md" in md_files
    bad = [b for p in md_files for b in broken_links(p, p.read_text(encoding="utf-8"))]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_docs_references_resolve():
    bad = []
    for path in tracked_files():
        text = read_text(path)
        if text is not None:
            bad += broken_doc_refs(path, text, ROOT / "docs")
    assert not bad, "references to missing docs pages or headings:\n" + "\n".join(bad)


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    assert {"algorithm.md", "quantizers.md", "timing.md", "baselines.md", "data.md", "choices.md"} <= set(pages)
    missing = [p for p in pages if f"]({p})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"


# ------------------------------------------------------------------------- the checkers can fail
def test_slug_follows_github():
    assert slug("QuAFL lazy progress") == "quafl-lazy-progress"
    assert slug("Fashion-MNIST, MNIST and CIFAR-10") == "fashion-mnist-mnist-and-cifar-10"
    assert slug("Modular lattice (paper code)") == "modular-lattice-paper-code"
    assert slug("`lattice` and *bits*") == "lattice-and-bits"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### b c\n") == {"a", "a-1", "b-c"}


def test_checkers_catch_planted_faults(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text("# Page\n## Real heading\n", encoding="utf-8")
    md = tmp_path / "README.md"
    text = ("[ok](docs/page.md#real-heading) [bad anchor](docs/page.md#no-such) [bad file](docs/nope.md) "
            "[web](https://example.org/x.md) ![img](missing.png)\n")
    assert len(broken_links(md, text)) == 3
    code = '"""See docs/page.md#real-heading, docs/page.md#gone and docs/other.md."""'
    assert [b.split(": ", 1)[1] for b in broken_doc_refs(tmp_path / "m.py", code, docs)] == [
        "docs/page.md#gone: no heading #gone", "docs/other.md: no page docs/other.md"]
    planted = "see " + _FORBIDDEN[0] + " and " + _FORBIDDEN[2] + "; also PAPER §4\nDATA.markdown docs/data.md\n"
    assert len(forbidden_mentions(tmp_path / "x.txt", planted)) == 3


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_matches_the_tree():
    """Every top-level folder, every qafl_core module and sub-package is in the README's Layout, and every
    file or folder the Layout names exists."""
    block = _layout_block()
    tokens = set(re.findall(r"[\w.-]+/?", block))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    top = {p.split("/")[0] + "/" for p in tracked if "/" in p and not p.startswith(".")}
    assert not top - tokens, f"top-level folders missing from README Layout: {sorted(top - tokens)}"
    package = ROOT / "qafl_core"
    modules = {p.name for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {p.name + "/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert not modules - tokens, f"qafl_core modules missing from README Layout: {sorted(modules - tokens)}"
    existing = {Path(p).name for p in tracked} | {part + "/" for p in tracked for part in Path(p).parts[:-1]}
    named = {t for t in tokens if not t.startswith(".") and (t.endswith((".py", ".ipynb", ".md")) or t.endswith("/"))}
    assert not named - existing, f"README Layout names files that do not exist: {sorted(named - existing)}"
