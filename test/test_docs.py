"""The README and docs/ render completely on a CommonMark renderer and their links hold.

A stray code fence once turned half of the README (its layout, results and speed sections)
into one raw text block; these checks fail on that, on broken relative links and anchors, on a
README that grows back into a lab notebook, and on a parameter table that drifts from
config/accel.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260
# The README and docs speak about the package and its measured conditions, not about how the
# work on it was organised.
FORBIDDEN = [
    r"issue\s*#?\s*\d+",
    r"\bsessions?\b",
    r"\bwas lent\b",
    r"no gpu was lent",
    r"before the fix",
    r"tried after this checkpoint",
]
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")
SECTION_HEADING = re.compile(r"^ {0,3}#{2,6}\s+\S")

MD = MarkdownIt("commonmark").enable("table")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _tokens(path: Path):
    return MD.parse(path.read_text(encoding="utf-8"))


def _fence_state(lines: list[str]) -> list[bool]:
    """Per source line: inside a fenced code block (fence lines themselves count as inside),
    as the author meant it: every block opens with a language (```bash), and a bare fence
    only closes one. A bare fence outside a block is a stray one; CommonMark opens a block
    there that swallows what follows, which `test_every_heading_renders_as_a_heading` catches."""
    inside, state = [], None
    for line in lines:
        match = FENCE.match(line)
        info = line.strip()[len(match.group(1)):].strip() if match else ""
        if state is None:
            if match and info:
                state = match.group(1)
            inside.append(state is not None)
        else:
            inside.append(True)
            if match and not info and match.group(1)[0] == state[0] \
                    and len(match.group(1)) >= len(state):
                state = None
    return inside


def _slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    tokens = _tokens(path)
    anchors = set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            inline = tokens[i + 1]
            text = "".join(c.content for c in inline.children if c.type in ("text", "code_inline"))
            anchors.add(_slug(text))
    return anchors


def _links(path: Path) -> list[str]:
    links = []
    for token in _tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                links.append(child.attrs["href"])
            elif child.type == "image":
                links.append(child.attrs["src"])
    return links


def _is_broken(page: Path, link: str) -> bool:
    """A relative link whose file, or whose heading anchor in a Markdown file, is missing."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):  # http:, https:, mailto:
        return False
    target, _, anchor = link.partition("#")
    path = (page.parent / target).resolve() if target else page
    if not path.exists():
        return True
    return bool(anchor) and path.suffix == ".md" and anchor not in _anchors(path)


@pytest.mark.parametrize("path", PAGES, ids=_ids(PAGES))
def test_code_fences_are_balanced(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    fence_lines = [n + 1 for n, line in enumerate(lines) if FENCE.match(line)]
    assert len(fence_lines) % 2 == 0, f"{path.name}: odd number of fence lines {fence_lines}"
    for token in _tokens(path):
        if token.type != "fence":
            continue
        start, end = token.map
        # An unclosed fence runs to the end of the file: its last line is no closing fence.
        assert FENCE.match(lines[end - 1]) and end - 1 > start, (
            f"{path.name}:{start + 1}: code fence never closed"
        )
        # Every block names its language, so a bare opening fence is a stray closing one.
        assert token.info.strip(), f"{path.name}:{start + 1}: code fence without a language"
        swallowed = [line for line in token.content.splitlines() if SECTION_HEADING.match(line)]
        assert not swallowed, f"{path.name}:{start + 1}: code block swallows {swallowed[:3]}"


@pytest.mark.parametrize("path", PAGES, ids=_ids(PAGES))
def test_every_heading_renders_as_a_heading(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    inside = _fence_state(lines)
    source = {n for n, line in enumerate(lines) if HEADING.match(line) and not inside[n]}
    rendered = {t.map[0] for t in _tokens(path) if t.type == "heading_open"}
    assert source, f"{path.name} has no heading"
    assert source == rendered, (
        f"{path.name}: heading lines {sorted(n + 1 for n in source ^ rendered)} differ"
    )


@pytest.mark.parametrize("path", PAGES, ids=_ids(PAGES))
def test_relative_links_point_to_existing_files_and_headings(path):
    broken = [link for link in _links(path) if _is_broken(path, link)]
    assert not broken, f"{path.name}: broken links {broken}"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README has {len(lines)} lines"


@pytest.mark.parametrize("path", PAGES, ids=_ids(PAGES))
def test_docs_speak_of_the_package_not_of_the_work(path):
    text = path.read_text(encoding="utf-8")
    found = [m.group(0) for p in FORBIDDEN for m in re.finditer(p, text, re.I)]
    assert not found, f"{path.name}: {found}"


def _node_parameter_table() -> dict[str, list[str]]:
    """{parameter: its cells (default, live, meaning)} of docs/node.md's parameter table."""
    table = {}
    for line in (ROOT / "docs" / "node.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            table[cells[0].strip("`")] = cells[1:]
    return table


def test_node_parameter_table_matches_the_parameters_file():
    params = yaml.safe_load((ROOT / "config" / "accel.yaml").read_text(encoding="utf-8"))
    params = params["/**"]["ros__parameters"]
    table = {name: yaml.safe_load(cells[0].strip("`"))
             for name, cells in _node_parameter_table().items()}
    assert sorted(table) == sorted(params), "docs/node.md parameters differ from config/accel.yaml"
    wrong = {name: (table[name], value) for name, value in params.items() if table[name] != value}
    assert not wrong, f"docs/node.md defaults differ from config/accel.yaml: {wrong}"


def test_node_parameter_table_lists_each_registry():
    """The meaning of a parameter with allowed values quotes exactly its registry's keys (other
    quoted words there are topics, message types or parameter names)."""
    from accel_ros.config import CHOICES

    table = _node_parameter_table()
    for name, registry in CHOICES.items():
        quoted = set(re.findall(r"`([^`]+)`", table[name][2]))
        values = {word for word in quoted if "/" not in word and word not in table}
        assert values == set(registry), (name, sorted(values), registry.choices)


def test_deploy_backend_table_is_the_backend_registry():
    """docs/deploy.md's table names every backend once, with the precisions its registry entry
    runs and CUDA only for the backend that does not run exported graphs on the CPU."""
    from accel_ros.config import BACKENDS, PRECISIONS

    rows = {}
    for line in (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[re.match(r"`([^`]+)`", cells[0]).group(1)] = cells
    assert list(rows) == list(BACKENDS), "docs/deploy.md backends differ from config.BACKENDS"
    for name, (_, _, precision, device) in rows.items():
        listed = tuple(p for p in re.findall(r"[a-z]+\d+", precision) if p in PRECISIONS)
        assert listed == BACKENDS[name].precisions, name
        assert ("CUDA" in device) == (not BACKENDS[name].graphs), name


def test_readme_command_lines_are_accepted_as_written():
    """Every `accel-ros ...` line of the README's code blocks parses with the command line's
    own parser (a renamed option or subcommand would leave the README wrong)."""
    import shlex

    from accel_ros.cli.main import build_parser

    readme = ROOT / "README.md"
    commands = [token.content for token in _tokens(readme) if token.type == "fence"]
    lines = [line.split("  #")[0].strip() for block in commands for line in block.splitlines()
             if line.strip().startswith("accel-ros ")]
    assert len(lines) >= 15, lines
    parser = build_parser()
    for line in lines:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"README: `{line}` is not accepted by accel-ros")


def test_checks_catch_a_stray_fence(tmp_path):
    """The failure these tests exist for: a fence after a closed block swallows the rest."""
    page = tmp_path / "page.md"
    page.write_text("# T\n\n```python\nx = 1\n```\n```\n\n## Layout\n\ntext\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="odd number of fence lines"):
        test_code_fences_are_balanced(page)
    with pytest.raises(AssertionError, match="heading lines"):
        test_every_heading_renders_as_a_heading(page)
