"""Similarity beyond the label, graded by WordNet: WordNet-graded retrieval and semantic triplets.

Class-level metrics (`metrics`) count a neighbour only when it has the query's label. The metrics
here grade what they cannot see. All are percentages (0-100, Python float), like `metrics`.

WordNet
-------
Tiny ImageNet's class ids are WordNet 3.0 noun synsets: ``n02085620`` is the synset at byte
offset 02085620 of ``data.noun``. `WordNet` reads that file directly (Debian's ``wordnet-base``
installs it under ``/usr/share/wordnet``; no NLTK): each synset line gives its words and its
pointers, of which the hypernym pointers ``@`` and instance-hypernym pointers ``@i`` make the
noun hierarchy (a DAG: a synset may have several hypernyms; every noun reaches ``entity``).

Wu–Palmer similarity of two synsets a, b (the standard definition, as NLTK's ``wup_similarity``):

    depth(x)   = 1 + the longest hypernym path from x up to a root (``entity`` has depth 1)
    d(a, x)    = the shortest hypernym path from a up to its ancestor x (d(a, a) = 0)
    LCS(a, b)  = the common ancestor (a and b included) of greatest depth; ties: smallest
                 d(a, x) + d(b, x), then lowest offset
    wup(a, b)  = 2 depth(LCS) / (d(a, LCS) + d(b, LCS) + 2 depth(LCS))

so wup(a, a) = 1, and a German shepherd and a golden retriever (LCS ``dog``) score far above a
German shepherd and a school bus (LCS ``whole``/``object``). NLTK picks its LCS by the shortest
root path instead of the longest; the two differ only for a few multiply-inherited pairs.

Metrics
-------
* `wup_at_k` (hierarchical precision@k): mean Wu–Palmer similarity of the classes of a query's k
  nearest neighbours to the query's class (a same-class neighbour counts 1).
* `mistake_wup_at_k` (mistake severity): the same mean over the *wrong* neighbours only (class
  other than the query's), pooled over all queries; higher = milder mistakes.
* `semantic_triplet_accuracy` on `semantic_triplets`: seeded triplets (q, p, n) with p and n both
  of classes other than q's and p's class strictly nearer q's in WordNet; the share with
  D(q, p) < D(q, n) (the paper's similarity precision, WordNet in place of human raters).

Near-duplicate recall, the instance-level similarity, is `near_duplicates`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ranking_lib.core.errors import RankingError

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_PACKAGE = "wordnet-base"
HYPERNYM_POINTERS = ("@", "@i")


# ---------------------------------------------------------------------------------- WordNet
class WordNet:
    """The noun synsets of a WordNet 3.0 ``data.noun`` (words and hypernyms), read on demand.

    A synset's offset is its line's byte offset in the file, so a synset is one seek; a file
    whose offsets do not match (hand-made) is indexed by one scan instead.
    """

    def __init__(self, directory: str | Path = DEFAULT_WORDNET_DIR):
        self.directory = Path(directory)
        self.path = self.directory / "data.noun"
        if not self.path.is_file():
            raise RankingError(f"WordNet not found: {self.path} is missing "
                               f"(apt-get install {WORDNET_PACKAGE}, or point wordnet_dir at a WordNet 3.0 dict)")
        self._data = self.path.read_bytes()
        self._scanned: dict[int, int] | None = None
        self._cache: dict[int, tuple[list[str], list[int]] | None] = {}

    def _line(self, offset: int) -> bytes | None:
        key = b"%08d " % offset
        if self._data[offset:offset + 9] == key:
            return self._data[offset:self._data.find(b"\n", offset)]
        if self._scanned is None:  # not a byte-offset file: index it once
            self._scanned = {}
            pos = 0
            for line in self._data.split(b"\n"):
                if line[:8].isdigit() and line[8:9] == b" ":
                    self._scanned[int(line[:8])] = pos
                pos += len(line) + 1
        pos = self._scanned.get(offset)
        return None if pos is None else self._data[pos:self._data.find(b"\n", pos)]

    def synset(self, offset: int) -> tuple[list[str], list[int]] | None:
        """(words, hypernym offsets) of the noun synset at `offset`, or None when there is none."""
        if offset not in self._cache:
            line = self._line(int(offset))
            self._cache[offset] = None if line is None else _parse_synset(line, self.path)
        return self._cache[offset]

    def name(self, offset: int) -> str:
        """The synset's first word, underscores as spaces (``German_shepherd`` -> ``German shepherd``)."""
        s = self.synset(offset)
        return s[0][0].replace("_", " ") if s and s[0] else f"n{offset:08d}"


def _parse_synset(line: bytes, path: Path) -> tuple[list[str], list[int]]:
    """``offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [sym offset pos st]... | gloss``."""
    try:
        f = line.split(b" | ", 1)[0].decode("utf-8", "replace").split()
        w_cnt = int(f[3], 16)
        words = [f[4 + 2 * i] for i in range(w_cnt)]
        p = 4 + 2 * w_cnt
        p_cnt = int(f[p])
        hyper = [int(f[p + 2 + 4 * i]) for i in range(p_cnt)
                 if f[p + 1 + 4 * i] in HYPERNYM_POINTERS and f[p + 3 + 4 * i] == "n"]
    except (IndexError, ValueError):
        raise RankingError(f"{path}: synset line {line[:8].decode(errors='replace')} is not in the "
                           "WordNet data-file format") from None
    return words, hyper


def wnid_offset(wnid: str) -> int | None:
    """``n02085620`` -> 2085620; None for an id that is not a WordNet noun synset id."""
    if len(wnid) == 9 and wnid[0] == "n" and wnid[1:].isdigit():
        return int(wnid[1:])
    return None


class ClassHierarchy:
    """Wu–Palmer similarities between a dataset's classes (see the module docstring).

    Args:
        wnids: the dataset's class ids in label order.
        wordnet: a `WordNet`.
    ``missing`` lists the ids not found as noun synsets; their rows and columns of `similarity`
    are NaN (left out of every mean below).
    """

    def __init__(self, wnids: Sequence[str], wordnet: WordNet):
        self.wnids = list(wnids)
        self.wordnet = wordnet
        self._depth: dict[int, int] = {}
        self.offsets = [wnid_offset(w) for w in self.wnids]
        self.offsets = [o if o is not None and wordnet.synset(o) is not None else None for o in self.offsets]
        self.missing = [w for w, o in zip(self.wnids, self.offsets) if o is None]
        self._up = [None if o is None else self._distances_up(o) for o in self.offsets]
        n = len(self.wnids)
        self.similarity = np.full((n, n), np.nan)
        self._lcs = np.full((n, n), -1, dtype=np.int64)
        for i in range(n):
            for j in range(i, n):
                if self._up[i] is not None and self._up[j] is not None:
                    lcs, wup = self._wup(self._up[i], self._up[j])
                    self.similarity[i, j] = self.similarity[j, i] = wup
                    self._lcs[i, j] = self._lcs[j, i] = lcs

    def _distances_up(self, offset: int) -> dict[int, int]:
        """{ancestor: shortest hypernym path length} of `offset`, itself included (0)."""
        dist, frontier = {offset: 0}, [offset]
        while frontier:
            nxt = []
            for s in frontier:
                for h in self.wordnet.synset(s)[1]:
                    if h not in dist and self.wordnet.synset(h) is not None:
                        dist[h] = dist[s] + 1
                        nxt.append(h)
            frontier = nxt
        return dist

    def depth(self, offset: int) -> int:
        """1 + the longest hypernym path from `offset` to a root."""
        if offset not in self._depth:
            stack = [offset]
            while stack:  # iterative post-order: hypernyms first
                s = stack[-1]
                todo = [h for h in self.wordnet.synset(s)[1]
                        if h not in self._depth and self.wordnet.synset(h) is not None]
                if todo:
                    stack.extend(todo)
                    continue
                stack.pop()
                ups = [self._depth[h] for h in self.wordnet.synset(s)[1] if h in self._depth]
                self._depth[s] = 1 + max(ups, default=0)
        return self._depth[offset]

    def _wup(self, up_a: dict[int, int], up_b: dict[int, int]) -> tuple[int, float]:
        common = up_a.keys() & up_b.keys()
        if not common:
            return -1, 0.0
        lcs = min(common, key=lambda x: (-self.depth(x), up_a[x] + up_b[x], x))
        d = self.depth(lcs)
        return lcs, 2.0 * d / (up_a[lcs] + up_b[lcs] + 2.0 * d)

    def relation(self, a: int, b: int) -> dict:
        """How class `a` and class `b` (labels) are related: ``{"lcs": name, "wup": similarity}``."""
        lcs = int(self._lcs[a, b])
        return {"lcs": self.wordnet.name(lcs) if lcs >= 0 else None,
                "wup": None if np.isnan(self.similarity[a, b]) else float(self.similarity[a, b])}


def load_hierarchy(wnids: Sequence[str], wordnet_dir: str | Path = DEFAULT_WORDNET_DIR
                   ) -> tuple[ClassHierarchy | None, str | None]:
    """(hierarchy, None), or (None, one-line note) when WordNet is not installed or the class ids
    are not WordNet synsets (the demo dataset's); semantic metrics are then left out."""
    if not any(wnid_offset(w) is not None for w in wnids):
        return None, (f"class ids ({', '.join(list(wnids)[:2])}, ...) are not WordNet noun synsets: "
                      "WordNet-graded metrics left out")
    try:
        wn = WordNet(wordnet_dir)
    except RankingError as e:
        return None, f"{e}: WordNet-graded metrics left out, class-level metrics computed"
    h = ClassHierarchy(wnids, wn)
    if len(h.missing) == len(h.wnids):
        return None, f"none of the class ids is a noun synset of {wn.path}: WordNet-graded metrics left out"
    return h, None


# ---------------------------------------------------------------------------------- metrics
def _check(neighbour_labels, query_labels, similarity, k: int):
    nl, ql = np.asarray(neighbour_labels), np.asarray(query_labels)
    sim = np.asarray(similarity, dtype=np.float64)
    if nl.ndim != 2 or ql.shape != (len(nl),) or len(nl) == 0:
        raise RankingError(f"need (Q, K) neighbour labels and (Q,) query labels, Q > 0 (got {nl.shape}, {ql.shape})")
    if not 1 <= k <= nl.shape[1]:
        raise RankingError(f"k={k} must be between 1 and {nl.shape[1]} (neighbour columns)")
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or max(nl.max(), ql.max()) >= len(sim):
        raise RankingError(f"similarity must be a (C, C) matrix covering every label (got {sim.shape})")
    return nl[:, :k], ql, sim


def wup_at_k(neighbour_labels, query_labels, similarity, k: int) -> float:
    """Hierarchical precision@k in percent: ``100 * mean_{q, j<k} similarity[query_labels[q],
    neighbour_labels[q, j]]`` (NaN entries, classes missing from WordNet, left out)."""
    nl, ql, sim = _check(neighbour_labels, query_labels, similarity, k)
    s = sim[ql[:, None], nl]
    return float(100.0 * np.nanmean(s)) if np.isfinite(s).any() else float("nan")


def mistake_wup_at_k(neighbour_labels, query_labels, similarity, k: int) -> tuple[float, int]:
    """Mistake severity in percent and the number of mistakes: the mean similarity of the wrong
    neighbours among the k nearest (label != the query's), pooled over all queries. NaN when there
    is no wrong neighbour."""
    nl, ql, sim = _check(neighbour_labels, query_labels, similarity, k)
    wrong = nl != ql[:, None]
    s = sim[ql[:, None], nl][wrong]
    s = s[np.isfinite(s)]
    return (float(100.0 * s.mean()) if len(s) else float("nan")), int(len(s))


def mistake_wup_chance(query_labels, db_labels, similarity) -> float:
    """The mistake severity of random mistakes, in percent: the mean similarity between a query's
    class and a database item of another class, over all queries and those items."""
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    sim = np.asarray(similarity, dtype=np.float64)
    counts = np.bincount(dl, minlength=len(sim)).astype(np.float64)
    off = np.where(np.eye(len(sim), dtype=bool) | np.isnan(sim), 0.0, sim)
    w = np.where(np.eye(len(sim), dtype=bool) | np.isnan(sim), 0.0, 1.0)
    num, den = (off @ counts)[ql].sum(), (w @ counts)[ql].sum()
    return float(100.0 * num / den) if den else float("nan")


def semantic_triplets(query_labels, db_labels, similarity, n: int, seed: int = 0) -> np.ndarray:
    """`n` seeded triplets (q, p, n): q a query index, p and n database indices of two classes
    other than q's with ``similarity[q's class, p's class] > similarity[q's class, n's class]``
    (strictly; ties drawn again). Pairs of classes are drawn uniformly, then an image of each.
    Returns an int64 (T, 3) array, T <= n (queries whose class has no such pair are skipped)."""
    ql, dl = np.asarray(query_labels, dtype=np.int64), np.asarray(db_labels, dtype=np.int64)
    sim = np.asarray(similarity, dtype=np.float64)
    rng = np.random.default_rng([int(seed), 5153])
    classes = np.unique(dl)
    by_class = {int(c): np.flatnonzero(dl == c) for c in classes}
    out = []
    for _ in range(20):  # rejection rounds: most draws are usable
        need = n - sum(len(o) for o in out)
        if need <= 0:
            break
        m = 2 * need + 16
        q = rng.integers(0, len(ql), m)
        a, b = classes[rng.integers(0, len(classes), m)], classes[rng.integers(0, len(classes), m)]
        sa, sb = sim[ql[q], a], sim[ql[q], b]
        ok = (a != ql[q]) & (b != ql[q]) & np.isfinite(sa) & np.isfinite(sb) & (sa != sb)
        q, a, b, sa, sb = q[ok], a[ok], b[ok], sa[ok], sb[ok]
        near, far = np.where(sa > sb, a, b), np.where(sa > sb, b, a)
        p = np.array([rng.choice(by_class[int(c)]) for c in near], dtype=np.int64)
        f = np.array([rng.choice(by_class[int(c)]) for c in far], dtype=np.int64)
        out.append(np.stack([q, p, f], axis=1)[:need] if len(q) else np.empty((0, 3), np.int64))
    return np.concatenate(out).astype(np.int64) if out else np.empty((0, 3), np.int64)


def semantic_triplet_accuracy(query_embeddings, db_embeddings, triplets) -> float:
    """Percentage of `semantic_triplets` ranked correctly: ``||q - p|| < ||q - n||`` (strict),
    q from `query_embeddings`, p and n from `db_embeddings`; float64 distances."""
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3 or len(t) == 0:
        raise RankingError(f"semantic triplet accuracy needs a non-empty (T, 3) array (got {t.shape})")
    q = np.asarray(query_embeddings, dtype=np.float64)[t[:, 0]]
    d = np.asarray(db_embeddings, dtype=np.float64)
    return float(100.0 * np.mean(np.linalg.norm(q - d[t[:, 1]], axis=1) < np.linalg.norm(q - d[t[:, 2]], axis=1)))


def semantic_retrieval_metrics(db, query_embeddings, query_labels, similarity, *, ks=(1, 10, 30),
                               num_triplets: int = 10000, seed: int = 0, chunk_size: int = 4096) -> dict:
    """The WordNet-graded metrics of queries against an `EmbeddingIndex` (queries not in it).

    Returns ``wup@k`` and ``mistake_wup@k`` for every k in `ks`, ``mistakes@k`` (their count) for
    the largest k, ``mistake_wup_chance`` (random mistakes), ``semantic_triplet_acc`` and
    ``semantic_triplets`` (how many)."""
    ks = sorted({int(k) for k in ks})
    q = np.asarray(query_embeddings, dtype=np.float32)
    ql = np.asarray(query_labels, dtype=np.int64)
    sim = np.asarray(similarity, dtype=np.float64)
    sums = {k: [0.0, 0, 0.0, 0] for k in ks}  # wup sum, wup count, mistake sum, mistake count
    for s in range(0, len(q), chunk_size):
        idx, _ = db.topk(q[s:s + chunk_size], ks[-1])
        nl, qe = db.labels[idx].astype(np.int64), ql[s:s + chunk_size]
        for k in ks:
            v = sim[qe[:, None], nl[:, :k]]
            fin = np.isfinite(v)
            wrong = fin & (nl[:, :k] != qe[:, None])
            sums[k][0] += float(v[fin].sum())
            sums[k][1] += int(fin.sum())
            sums[k][2] += float(v[wrong].sum())
            sums[k][3] += int(wrong.sum())
    out = {}
    for k in ks:
        ws, wn, ms, mn = sums[k]
        out[f"wup@{k}"] = 100.0 * ws / wn if wn else float("nan")
        out[f"mistake_wup@{k}"] = 100.0 * ms / mn if mn else float("nan")
    out[f"mistakes@{ks[-1]}"] = sums[ks[-1]][3]
    out["mistake_wup_chance"] = mistake_wup_chance(ql, db.labels.astype(np.int64), sim)
    trip = semantic_triplets(ql, db.labels, sim, num_triplets, seed)
    out["semantic_triplet_acc"] = semantic_triplet_accuracy(q, db.embeddings, trip) if len(trip) else float("nan")
    out["semantic_triplets"] = int(len(trip))
    return out
