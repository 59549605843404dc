"""The documentation holds together: the README stays a short user's page, its two commands
are the ones CI runs, and every relative link (and #anchor) in README.md, docs/*.md and
bench/README.md resolves, with GitHub's heading slugs."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")


def doc_files() -> list[Path]:
    """The documentation whose links must resolve."""
    files = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lower-cased, punctuation
    dropped (letters, digits, '_', '-' and spaces stay), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_|_(?!\w)", "", text)  # _emphasis_, not snake_case
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated slugs get -1, -2 … as on GitHub."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link outside code."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: …
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where} (no such file)")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{where} (outside the repository)")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                problems.append(f"{where} (no heading with that anchor)")
    return problems


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    assert broken_links(path) == []


def test_the_documentation_pages_exist():
    files = {str(p.relative_to(ROOT)) for p in doc_files()}
    for name in ("cli", "python-api", "http-api", "query-language", "models", "scale"):
        assert f"docs/{name}.md" in files
    for name in ("reliability", "architecture", "extending"):
        assert f"docs/{name}.md" in files


def test_the_link_checker_catches_what_it_must(tmp_path, monkeypatch):
    """Each kind of broken link is reported; code, URLs and GitHub's slugs are not."""
    tmp_path = tmp_path.resolve()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text(
        "# Other\n\n## Compound queries, explained: `query --explain`\n\n## Dup\n\n## Dup\n"
    )
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n## Where the index lives\n\n"
        "[ok](docs/other.md#compound-queries-explained-query---explain) "
        "[ok](#where-the-index-lives) [ok](docs/other.md#dup-1) ![ok](pic.png) "
        "[ok](https://example.com/x) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n# not a heading\n```\n"
        "[bad](missing.md) [bad](#not-here) [bad](docs/other.md#dup-2) "
        "[bad](pic.png#x) [bad](#not-a-heading)\n"
    )
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file)",
        "#not-here (no heading with that anchor)",
        "docs/other.md#dup-2 (no heading with that anchor)",
        "pic.png#x (an anchor into a file that is not Markdown)",
        "#not-a-heading (no heading with that anchor)",
    ]


def test_slugs_follow_github():
    assert slug("Web page and HTTP API: `mmsearch serve`") == "web-page-and-http-api-mmsearch-serve"
    assert slug("`gpu_check.py` — CUDA paths") == "gpu_checkpy--cuda-paths"
    assert slug("Fine-tuning on your own image–caption pairs") == (
        "fine-tuning-on-your-own-imagecaption-pairs"
    )
    assert slug("**Bold** and [a link](x.md)") == "bold-and-a-link"


# -- the README's two commands are the ones CI runs ----------------------------------------


def ci_sections() -> dict[str, list[str]]:
    """The commands of .ci/run under each "# README: NAME" comment, up to the next comment
    or blank line."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        match = re.match(r"#\s*README:\s*(.+)", line)
        if match:
            current = sections.setdefault(match.group(1).strip(), [])
        elif not line or line.startswith("#"):
            current = None
        elif current is not None:
            current.append(line)
    return sections


def readme_commands() -> tuple[list[str], list[str]]:
    """The steps of the README's install-and-run command and of its test command: the first
    two ```bash blocks of "## The two commands"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the two commands are two bash blocks"
    install = [step.strip() for step in blocks[0].strip().split("&&")]
    tests = [line.strip() for line in blocks[1].strip().splitlines() if line.strip()]
    return install, tests


def _same(a: str, b: str) -> bool:
    return shlex.split(a) == shlex.split(b)


def test_readme_commands_are_the_ones_ci_runs():
    sections = ci_sections()
    assert sections.get("set-up") and sections.get("tests"), sections
    install, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    # The set-up: CI makes the same venv, activates it and installs the same extras.
    for step in install[:2]:
        assert any(_same(step, line) for line in ci), f"CI does not run {step!r}"
    for command in sections["set-up"]:
        assert any(_same(command, step) for step in install), (
            f"the README's set-up lacks CI's {command!r}: {install}"
        )
    assert [s.split()[:2] for s in install[-2:]] == [["mmsearch", "index"], ["mmsearch", "query"]]
    # The tests: the README's test command is one of CI's, and the README shows the others.
    assert tests == ["pytest -q"]
    assert any(_same(tests[0], command) for command in sections["tests"])
    text = README.read_text(encoding="utf-8")
    for command in sections["tests"]:
        assert command in text, f"CI runs {command!r}; the README does not show it"


def layers_contract() -> list[str]:
    """The modules of setup.cfg's layers contract, top layer first."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    layers = cfg["importlinter:contract:layers"]["layers"]
    return [m.strip() for line in layers.splitlines() for m in line.split("|") if m.strip()]


def test_the_architecture_page_names_every_layered_module():
    """docs/architecture.md's layer table follows the import contract: every module the
    contract layers is named there (a module added to the contract must be documented)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    modules = layers_contract()
    assert "mmsearch.cli" in modules and len(modules) > 10
    assert [m for m in modules if f"`{m}`" not in table] == []
