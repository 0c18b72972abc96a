"""One spelling of each word: British ("neighbour", "normalise") in code, comments and docs;
the American forms only in names others own (torch's ``F.normalize``, scikit-learn's
``NearestNeighbors``) and in the public names kept as they are (``normalize_embeddings``,
``EmbeddingNet(normalize=...)``)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ranking_lib", "tests", "benchmarks", "scripts", "report", "cluster", "data_scripts", "notebooks", "docs")
SUFFIXES = {".py", ".md", ".ipynb", ".yaml", ".yml", ".sh", ".j2", ".txt"}
ALLOWED = re.compile(
    r"NearestNeighbors|n_neighbors|kneighbors|sklearn\.neighbors|hnsw\.neighbors"  # scikit-learn's, FAISS's
    r"|(?:F|functional)\.normalize\b"  # torch's
    r"|normalize_embeddings|normalize-embeddings|\bnormalize=|\.normalize\b|= normalize$|^\s*normalize: "  # public names
)
AMERICAN = re.compile(r"neighbor|normaliz", re.IGNORECASE)


def _files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and "runs" not in path.relative_to(ROOT).parts[:2]:
                yield path
    yield from (ROOT / name for name in ("README.md", "RESULTS.md", "Makefile"))


def test_one_spelling_of_neighbour_and_normalise():
    found = []
    for path in _files():
        if path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if AMERICAN.search(ALLOWED.sub("", line)):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "American spellings (the project writes neighbour, normalise):\n" + "\n".join(found)
