"""docs/ALGORITHM.md is the document the code points at: every reference to one of its sections resolves."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ALGORITHM.md"
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg"}
SKIPPED_DIRS = {".git", ".venv", "runs", "__pycache__", "build", "dist"}
REFERENCE = re.compile(r"ALGORITHM\.md#([A-Za-z0-9_-]+)")


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set:
    lines = re.sub(r"```.*?```", "", markdown, flags=re.S).splitlines()
    return {github_anchor(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def repository_text_files():
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_DIRS.intersection(parts) \
                and not any(p.endswith(".egg-info") for p in parts):
            yield path


def test_github_anchor_follows_githubs_rule():
    assert github_anchor("One TD3-SBC update") == "one-td3-sbc-update"
    assert github_anchor("Departures of the research code") == "departures-of-the-research-code"
    assert github_anchor("What `--compat` does (items 1-7)") == "what---compat-does-items-1-7"


def test_every_reference_to_a_section_of_the_algorithm_document_exists():
    known = anchors(DOC.read_text())
    references = {}
    for path in repository_text_files():
        for anchor in REFERENCE.findall(path.read_text(errors="replace")):
            references.setdefault(anchor, []).append(str(path.relative_to(ROOT)))
    assert len(references) >= 10, references  # the code, tests and docs point at many of its sections
    missing = {a: files for a, files in references.items() if a not in known}
    assert not missing, f"sections referenced but absent from docs/ALGORITHM.md: {missing}"


def test_no_reference_to_the_old_numbered_specification_remains():
    stale = [str(p.relative_to(ROOT)) for p in repository_text_files()
             if p.name != "test_docs.py" and re.search(r"spec §|spec/DATA\.md|spec/ALGORITHM\.md", p.read_text())]
    assert not stale, stale
