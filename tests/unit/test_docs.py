"""The README stays an entry and the docs stay true to the repository: a short README, links
and anchors that resolve, `make` targets that exist, and a folder map of real folders.

Plain text parsing, no servers: a few milliseconds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
MAP_HEADING = "Map of folders"

FENCE = re.compile(r"^ {0,3}(```|~~~)")
# a code span: a run of backticks, the code (it may wrap onto the next line), the same run
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.DOTALL)
# [text](target) and ![alt](target), an optional "title" after the target
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
MAKE = re.compile(r"make ([a-z][a-z0-9_-]*)")
# a rule line of the Makefile (`name:` but not `NAME :=`); digits allowed, as in `k8s-render`
MAKE_TARGET = re.compile(r"^([a-zA-Z0-9_-]+):(?!=)", re.MULTILINE)
FILE_NAME = re.compile(r"^[\w.-]+\.(py|sh|ya?ml|json|md|toml|txt|Dockerfile|template|lock)$")
# local state that `make run` creates and git ignores: named in the map, absent from a checkout
LOCAL_STATE = ".fraud/"


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(the prose paragraphs outside fenced code blocks, the code: each line of the fenced blocks
    and each inline code span, a span wrapped over lines joined with a space)."""
    paragraphs: list[list[str]] = [[]]
    code: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            paragraphs.append([])
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            else:
                code.append(line)
        elif line.strip():
            paragraphs[-1].append(line)
        else:
            paragraphs.append([])
    prose = ["\n".join(lines) for lines in paragraphs if lines]
    for paragraph in prose:
        code.extend(m.group(2).replace("\n", " ") for m in INLINE_CODE.finditer(paragraph))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than hyphens,
    underscores and spaces dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of a markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    prose, _ = split_code(path.read_text())
    for line in (line for paragraph in prose for line in paragraph.splitlines()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def local_links(path: Path) -> list[str]:
    """The link targets of a markdown file that point into the repository (no scheme)."""
    prose, _ = split_code(path.read_text())
    targets: list[str] = []
    for paragraph in prose:
        paragraph = INLINE_CODE.sub("", paragraph)  # `[x](y)` in a code span is not a link
        targets.extend(m.group(1) for m in INLINE_LINK.finditer(paragraph))
        for line in paragraph.splitlines():
            reference = REFERENCE_LINK.match(line)
            if reference:
                targets.append(reference.group(1))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in local_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {rel(resolved)}")
    return problems


def makefile_targets() -> set[str]:
    return set(MAKE_TARGET.findall((ROOT / "Makefile").read_text()))


def folder_map() -> list[str]:
    """The lines of the README's map section (its heading up to the next heading of its level)."""
    lines = README.read_text().splitlines()
    start = lines.index(f"## {MAP_HEADING}")
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^#{1,2} ", lines[i])), len(lines)
    )
    return lines[start + 1 : end]


def map_rows() -> list[tuple[str, list[str]]]:
    """(folder of the first column, the other code spans of the row) for each map table row."""
    rows = []
    for line in folder_map():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(cells[0]) <= {"-", ":", " "}:
            continue
        first = INLINE_CODE.search(cells[0])
        if first is None:  # the header row
            continue
        rest = [m.group(2) for cell in cells[1:] for m in INLINE_CODE.finditer(cell)]
        rows.append((first.group(2), rest))
    return rows


def layered_stages() -> set[str]:
    """The names the layers contract of flows/ orders (`[tool.importlinter]`)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names: set[str] = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] == "layers" and contract.get("containers") == ["flows"]:
            for layer in contract["layers"]:
                names.update(part.strip() for part in re.split(r"[|:]", layer))
    assert names, "pyproject.toml has no layers contract for flows"
    return names


def ignored_names() -> set[str]:
    names = set()
    for line in (ROOT / ".gitignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "*" not in line:
            names.add(line.strip("/"))
    return names


# ------------------------------------------------------------------------------------- tests


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_there_are_docs_and_the_readme_links_each():
    docs = sorted(DOCS.glob("*.md"))
    assert docs, "docs/ holds no markdown files"
    linked = {
        (README.parent / t.partition("#")[0]).resolve() for t in local_links(README) if t[0] != "#"
    }
    assert [rel(d) for d in docs if d.resolve() not in linked] == []


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_local_links_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_make_targets_exist(path):
    _, code = split_code(path.read_text())
    named = {target for snippet in code for target in MAKE.findall(snippet)}
    assert sorted(named - makefile_targets()) == []


def test_every_path_in_the_folder_map_exists():
    missing = []
    rows = map_rows()
    assert rows, "the README's map of folders has no table rows"
    for folder, spans in rows:
        if not (ROOT / folder).is_dir():
            missing.append(folder)
        for span in spans:
            if "/" in span:
                if not (ROOT / span).exists():
                    missing.append(span)
            elif FILE_NAME.match(span) and not any(
                (base / span).exists() for base in (ROOT / folder, ROOT)
            ):  # a bare file name: in the row's folder, else at the top
                missing.append(f"{folder}{span}")
    # the prose around the table: top-level files, and the local state folder
    for line in folder_map():
        if line.startswith("|"):
            continue
        for span in (m.group(2) for m in INLINE_CODE.finditer(line)):
            if span == LOCAL_STATE:
                continue
            if ("/" in span or FILE_NAME.match(span) or span == "Makefile") and not (
                ROOT / span
            ).exists():
                missing.append(span)
    assert missing == []


def test_the_folder_map_lists_every_folder():
    """Every top-level folder of the checkout (git-ignored ones aside) and every stage folder of
    flows/ that the import layers name (pyproject.toml) has its row in the map."""
    listed = {folder.rstrip("/") for folder, _ in map_rows()}
    listed_top = {folder.split("/")[0] for folder in listed}  # .github/workflows/ lists .github
    skip = ignored_names() | {"__pycache__"}
    top = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir()
        and p.name not in skip
        and (not p.name.startswith(".") or p.name in {".ci", ".github"})
    }
    assert sorted(top - listed_top) == [], "top-level folders missing from the README's map"
    stages = {f"flows/{name}" for name in layered_stages() if (ROOT / "flows" / name).is_dir()}
    assert sorted(stages - listed) == [], "stage folders missing from the README's map"


def test_slugs_follow_github():
    assert slug("Serving the champion (BentoML)") == "serving-the-champion-bentoml"
    assert slug("Local state and the `FRAUD_*` variables") == "local-state-and-the-fraud_-variables"
    assert slug("The serving fleet: what clients get follows the champion") == (
        "the-serving-fleet-what-clients-get-follows-the-champion"
    )


def test_architecture_states_every_layer_of_the_contract():
    """docs/architecture.md draws the layers of pyproject.toml's contract, each as written."""
    text = (DOCS / "architecture.md").read_text()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = [
        layer
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
    ]
    assert [layer for layer in layers if layer not in text] == []
