"""WordNet-graded metrics (ranking_lib.retrieval.semantic), each on a hand-computed case; a
hand-made data.noun stands in for WordNet (one test reads the real files)."""

from pathlib import Path

import numpy as np
import pytest

from ranking_lib.core.errors import RankingError
from ranking_lib.retrieval.index import EmbeddingIndex
from ranking_lib.retrieval.semantic import (
    ClassHierarchy,
    WordNet,
    load_hierarchy,
    mistake_wup_at_k,
    mistake_wup_chance,
    semantic_retrieval_metrics,
    semantic_triplet_accuracy,
    semantic_triplets,
    wup_at_k,
)

# offset: (word, hypernym pointers). The tree (depth in brackets):
#   entity[1] -> animal[2] -> dog[3] -> shepherd[4], retriever[4]
#                          -> cat[3]
#             -> vehicle[2] -> bus[3]
#   toy_dog: hypernyms dog and (instance) toy[4] <- plaything[3] <- artifact[2] <- entity: two
#   paths up, of 4 and 5 synsets.
SYNSETS = {
    1: ("entity", []), 2: ("animal", [("@", 1)]), 3: ("dog", [("@", 2)]),
    4: ("shepherd", [("@", 3)]), 5: ("retriever", [("@", 3)]), 6: ("cat", [("@", 2)]),
    7: ("vehicle", [("@", 1)]), 8: ("bus", [("@", 7)]), 9: ("artifact", [("@", 1)]),
    10: ("toy", [("@", 12)]), 11: ("toy_dog", [("@", 3), ("@i", 10)]), 12: ("plaything", [("@", 9)]),
}
WNIDS = ["n00000004", "n00000005", "n00000006", "n00000008"]  # shepherd, retriever, cat, bus


def write_data_noun(directory: Path, byte_offsets: bool = True) -> Path:
    """A data.noun in WordNet's format; with `byte_offsets` each synset's number is its line's
    byte offset (as in the real file), else the numbers above (the reader then scans)."""
    header = "  1 This is a hand-made WordNet data.noun for tests.\n"

    def line(off: int, word: str, ptrs, numbers) -> str:
        p = " ".join(f"{sym} {numbers[h]:08d} n 0000" for sym, h in ptrs)
        return f"{numbers[off]:08d} 05 n 01 {word} 0 {len(ptrs):03d}{' ' + p if p else ''} ~ 00000000 n 0000 | a {word}  \n"

    numbers = {k: k for k in SYNSETS}
    if byte_offsets:  # every line has the same length for any 8-digit numbers: lay them out once
        pos = len(header)
        for k, (w, ptrs) in SYNSETS.items():
            numbers[k] = pos
            pos += len(line(k, w, ptrs, {j: 0 for j in SYNSETS}))
    text = header + "".join(line(k, w, ptrs, numbers) for k, (w, ptrs) in SYNSETS.items())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data.noun").write_text(text)
    return directory


@pytest.fixture
def wordnet(tmp_path):
    return WordNet(write_data_noun(tmp_path / "wn", byte_offsets=False))


@pytest.fixture
def hierarchy(wordnet):
    return ClassHierarchy(WNIDS, wordnet)


def test_wordnet_reads_words_and_hypernyms_at_byte_offsets(tmp_path):
    wn_dir = write_data_noun(tmp_path / "wn", byte_offsets=True)
    text = (wn_dir / "data.noun").read_bytes()
    toy_dog = int(next(line for line in text.splitlines() if b" toy_dog " in line)[:8])
    wn = WordNet(wn_dir)
    words, hyper = wn.synset(toy_dog)
    assert words == ["toy_dog"] and len(hyper) == 2  # '@' and '@i' both count
    assert [wn.name(h) for h in hyper] == ["dog", "toy"]
    assert wn._scanned is None    # found by seeking, no scan
    assert wn.synset(3) is None  # not a line start (nor a number in the file)


def test_wu_palmer_by_hand(hierarchy, wordnet):
    s = hierarchy.similarity
    # wup = 2 depth(LCS) / (d(a, LCS) + d(b, LCS) + 2 depth(LCS))
    assert s[0, 0] == 1.0
    assert s[0, 1] == pytest.approx(6 / 8)   # shepherd-retriever: LCS dog (3), 1 + 1 edges
    assert s[0, 2] == pytest.approx(4 / 7)   # shepherd-cat: LCS animal (2), 2 + 1
    assert s[0, 3] == pytest.approx(2 / 7)   # shepherd-bus: LCS entity (1), 3 + 2
    assert s[2, 3] == pytest.approx(2 / 6)   # cat-bus: entity, 2 + 2
    assert np.allclose(s, s.T)
    assert hierarchy.relation(0, 1) == {"lcs": "dog", "wup": pytest.approx(0.75)}
    # two hypernym paths: depth is 1 + the longest (toy_dog: 3 edges up via dog, 4 via toy)
    assert hierarchy.depth(11) == 5
    h = ClassHierarchy(["n00000011", "n00000010", "n00000004"], wordnet)
    assert h.similarity[0, 1] == pytest.approx(8 / 9)  # toy_dog-toy: LCS toy (4), 1 + 0 edges
    assert h.similarity[0, 2] == pytest.approx(6 / 8)  # toy_dog-shepherd: LCS dog (3), 1 + 1


def test_missing_synsets_and_missing_wordnet(tmp_path, wordnet):
    h = ClassHierarchy(["n00000004", "n09999999"], wordnet)
    assert h.missing == ["n09999999"] and np.isnan(h.similarity[1]).all() and h.similarity[0, 0] == 1
    hier, note = load_hierarchy(WNIDS, tmp_path / "nowhere")
    assert hier is None and "apt-get install wordnet-base" in note and "\n" not in note
    hier, note = load_hierarchy(["d0000001", "d0000002"], tmp_path / "nowhere")
    assert hier is None and "not WordNet" in note
    with pytest.raises(RankingError, match="wordnet-base"):
        WordNet(tmp_path / "nowhere")


def test_wup_and_mistake_severity_by_hand(hierarchy):
    s = hierarchy.similarity
    # query 0 (shepherd): neighbours shepherd, retriever, bus; query 1 (cat): bus, cat, shepherd
    nl = np.array([[0, 1, 3], [3, 2, 0]])
    ql = np.array([0, 2])
    assert wup_at_k(nl, ql, s, 1) == pytest.approx(100 * (1 + 2 / 6) / 2)
    assert wup_at_k(nl, ql, s, 3) == pytest.approx(100 * (1 + 6 / 8 + 2 / 7 + 2 / 6 + 1 + 4 / 7) / 6)
    sev, n = mistake_wup_at_k(nl, ql, s, 3)  # wrong: retriever, bus (query 0); bus, shepherd (query 1)
    assert n == 4 and sev == pytest.approx(100 * (6 / 8 + 2 / 7 + 2 / 6 + 4 / 7) / 4)
    assert mistake_wup_at_k(nl[:, :1], np.array([0, 3]), s, 1) == (pytest.approx(float("nan"), nan_ok=True), 0)
    # random mistakes: query shepherd against one image each of retriever, cat, bus (+ a shepherd)
    assert mistake_wup_chance([0], [0, 1, 2, 3], s) == pytest.approx(100 * (6 / 8 + 4 / 7 + 2 / 7) / 3)
    with pytest.raises(RankingError, match="k=4"):
        wup_at_k(nl, ql, s, 4)


def test_semantic_triplets_and_accuracy(hierarchy):
    s = hierarchy.similarity
    db_labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ql = np.array([0, 1, 2, 3])
    t = semantic_triplets(ql, db_labels, s, 500, seed=3)
    assert t.shape == (500, 3)
    assert np.array_equal(t, semantic_triplets(ql, db_labels, s, 500, seed=3))  # seeded
    qc, pc, nc = ql[t[:, 0]], db_labels[t[:, 1]], db_labels[t[:, 2]]
    assert (pc != qc).all() and (nc != qc).all()
    assert (s[qc, pc] > s[qc, nc]).all()  # p's class strictly nearer q's
    # bus meets every other class at entity, nearest to cat (2/6 > 2/7 for shepherd and retriever,
    # which tie): a bus query's positive is always a cat, its negative a dog
    bus = qc == 3
    assert bus.any() and (pc[bus] == 2).all() and np.isin(nc[bus], [0, 1]).all()
    # accuracy by hand: 1-d embeddings, q at 0; triplet 1 right (p at 1, n at 2), triplet 2 wrong
    q = np.array([[0.0]])
    db = np.array([[1.0], [2.0]])
    assert semantic_triplet_accuracy(q, db, np.array([[0, 0, 1], [0, 1, 0]])) == 50.0


def test_semantic_retrieval_metrics_on_an_index(hierarchy):
    s = hierarchy.similarity
    # database on a line: shepherd at 0, retriever at 1, cat at 3, bus at 10; query shepherd at 0.4
    db = EmbeddingIndex(np.array([[0.0], [1.0], [3.0], [10.0]], np.float32), np.array([0, 1, 2, 3]), backend="torch")
    m = semantic_retrieval_metrics(db, np.array([[0.4]], np.float32), np.array([0]), s, ks=(1, 2, 3),
                                   num_triplets=50, seed=0)
    assert m["wup@1"] == pytest.approx(100.0)
    assert m["wup@2"] == pytest.approx(100 * (1 + 0.75) / 2)
    assert m["mistake_wup@3"] == pytest.approx(100 * (0.75 + 4 / 7) / 2) and m["mistakes@3"] == 2
    assert np.isnan(m["mistake_wup@1"])
    # every semantic triplet of the shepherd query: p retriever (nearer) vs n cat/bus, or p cat vs n bus,
    # all ranked right by distance on this line
    assert m["semantic_triplets"] == 50 and m["semantic_triplet_acc"] == 100.0


REAL = Path("/usr/share/wordnet/data.noun")


@pytest.mark.skipif(not REAL.is_file(), reason="WordNet not installed (apt-get install wordnet-base)")
def test_real_wordnet_dog_cat():
    wn = WordNet(REAL.parent)
    # dog.n.01, cat.n.01, German shepherd, golden retriever, school bus (Tiny ImageNet's n04146614)
    h = ClassHierarchy(["n02084071", "n02121620", "n02106662", "n02099601", "n04146614"], wn)
    assert h.missing == []
    assert h.similarity[0, 1] == pytest.approx(12 / 14)  # LCS carnivore, depth 12, 2 + 2 edges (NLTK: 0.857)
    assert h.relation(2, 3)["lcs"] == "dog"
    assert h.similarity[2, 3] > 0.7 > h.similarity[2, 4]
    assert wn.name(2106662) == "German shepherd"
