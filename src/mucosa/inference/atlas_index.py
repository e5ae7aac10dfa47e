"""The atlas's vector index (FAISS): nearest frames by cosine distance, exact or approximate (HNSW).

Embeddings are L2-normalised, so the inner product is the cosine similarity; every distance this module
reports is the **cosine distance** ``1 - similarity``, from 0 (the same direction) to 2 (opposite). (It
ranks neighbours as the Euclidean distance on the unit sphere does: ``euclidean² = 2 × cosine distance``.)

- Up to :data:`HNSW_FROM` frames the index is exact (``IndexFlatIP``: every atlas frame is compared).
- From :data:`HNSW_FROM` frames on it is a graph (``IndexHNSWFlat``, inner product, :data:`HNSW_M` links
  per frame, :data:`HNSW_EF_SEARCH` candidates per search), measured at recall@10 ≥ 0.99 against exact
  search by ``benchmarks/atlas_search.py`` (docs/results.md, "Atlas search (synthetic embeddings)"). Its
  graph is saved with the atlas (building it takes minutes at a million frames).
- A search can leave out some atlas rows (a patient's own frames) with a FAISS ``IDSelector``. Left-out
  rows near the query fill a graph search's candidates, so it takes one more candidate for each (up to
  :data:`MAX_EF_SEARCH` more); a graph search that still comes back short (its whole neighbourhood left
  out) is done again exactly, on the same stored vectors.
- FAISS's OpenMP threads (its OpenBLAS uses them too) are set to :func:`default_threads` when an index is
  made, so a server's model is not starved: a case's search is short and needs few cores.

Example:
    >>> import numpy as np
    >>> vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    >>> index = VectorIndex.build(vectors)
    >>> distances, rows = index.search(vectors[:1], 2)
    >>> index.kind, rows.tolist(), [round(float(d), 3) for d in distances[0]]
    ('exact', [[0, 1]], [0.0, 0.2])
    >>> index.search(vectors[:1], 2, excluded=np.array([0]))[1].tolist()
    [[1, 2]]
"""

from __future__ import annotations

import logging
import os

import faiss
import numpy as np

from mucosa.errors import MucosaError

__all__ = ["EXACT", "HNSW", "HNSW_FROM", "HNSW_M", "HNSW_EF_CONSTRUCTION", "HNSW_EF_SEARCH", "IndexFileError",
           "VectorIndex", "default_threads", "set_threads"]

log = logging.getLogger(__name__)

EXACT, HNSW = "exact", "hnsw"
# From this many atlas frames on, the index is HNSW: benchmarks/atlas_search.py (docs/results.md, "Atlas
# search (synthetic embeddings)": D = 128, 2-core CPU) measured HNSW (M 32, efSearch 128) at recall@10
# 0.998-0.9997 against exact search from 3 x 10^4 frames on (10^6 included), and below the 0.99 goal at 10^4
# (0.975). Exact search answers a case's 64 frames in about 50 ms at 3 x 10^4 frames and grows with the atlas
# (0.34 s at 10^5, 7 s at 10^6); HNSW in 7-23 ms at any of these sizes.
HNSW_FROM = 30_000
HNSW_M = 32  # graph links per frame (memory: about 2 × M × 4 bytes a frame on top of the vectors)
HNSW_EF_CONSTRUCTION = 80  # candidates while building the graph
HNSW_EF_SEARCH = 128  # candidates while searching (at least the number of neighbours asked for)
MAX_EF_SEARCH = 1024  # at most this many more candidates for the rows a search leaves out
MAX_THREADS = 4  # a case's search gains little from more cores


class IndexFileError(MucosaError):
    """Bytes that are not a FAISS index of the expected kind, size and dimension."""


def default_threads() -> int:
    """FAISS threads: half the cores, between 1 and :data:`MAX_THREADS` (the rest stay with the model)."""
    return max(1, min(MAX_THREADS, (os.cpu_count() or 1) // 2))


def set_threads(threads: int | None = None) -> int:
    """Set FAISS's OpenMP threads (process-wide, its own pool: PyTorch's is not touched); returns them."""
    threads = default_threads() if threads is None else max(1, int(threads))
    faiss.omp_set_num_threads(threads)
    return threads


class VectorIndex:
    """Nearest-neighbour search over L2-normalised float32 vectors, rows numbered from 0 in adding order.

    Use :meth:`build` (chooses exact or HNSW by size) or :meth:`from_bytes`; :meth:`add` grows it, and an
    exact index that reaches :data:`HNSW_FROM` rows is rebuilt as HNSW.
    """

    def __init__(self, index: faiss.Index, ef_search: int = HNSW_EF_SEARCH) -> None:
        self.index = index
        self.ef_search = ef_search
        set_threads()

    @property
    def kind(self) -> str:
        return HNSW if isinstance(self.index, faiss.IndexHNSWFlat) else EXACT

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def describe(self) -> dict:
        """The index's kind and settings, as plain data (for the atlas's manifest and the benchmark)."""
        if self.kind == EXACT:
            return {"kind": EXACT, "metric": "cosine distance"}
        return {"kind": HNSW, "metric": "cosine distance", "M": int(self.index.hnsw.nb_neighbors(1)),
                "ef_construction": int(self.index.hnsw.efConstruction), "ef_search": int(self.ef_search)}

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str | None = None, m: int = HNSW_M) -> VectorIndex:
        """An index of ``vectors`` (N, D): ``kind`` ``"exact"`` or ``"hnsw"``, or by size (:data:`HNSW_FROM`)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        kind = kind or (HNSW if len(vectors) >= HNSW_FROM else EXACT)
        if kind == HNSW:
            index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            index = faiss.IndexFlatIP(vectors.shape[1])
        built = cls(index)
        if len(vectors):
            index.add(vectors)
        log.debug("atlas index: %s, %d vectors of %d", built.kind, len(vectors), vectors.shape[1])
        return built

    def add(self, vectors: np.ndarray, all_vectors: np.ndarray) -> VectorIndex:
        """The index grown by ``vectors``; ``all_vectors`` (the old ones and these) rebuild it as HNSW when
        an exact index reaches :data:`HNSW_FROM` rows."""
        if self.kind == EXACT and self.size + len(vectors) >= HNSW_FROM:
            return VectorIndex.build(all_vectors, HNSW)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return self

    def search(self, queries: np.ndarray, k: int, excluded: np.ndarray | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of each query, nearest first, leaving out the rows in ``excluded``.

        Returns:
            (distances, rows), both (Q, k): cosine distances (float32) and row numbers (int64); where fewer
            than ``k`` rows are left to find, the missing places hold distance ``inf`` and row ``-1``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(k)
        if len(queries) == 0 or k <= 0 or self.size == 0:
            return np.full((len(queries), max(k, 0)), np.inf, np.float32), np.full((len(queries), max(k, 0)), -1)
        selector, bitmap, reachable, ef = None, None, min(k, self.size), max(self.ef_search, k)
        if excluded is not None and len(excluded):
            ef = max(ef, k + min(len(excluded), MAX_EF_SEARCH))  # left-out rows take candidates' places
            allowed = np.ones(self.size, dtype=bool)
            allowed[np.asarray(excluded, dtype=np.int64)] = False
            bitmap = np.packbits(allowed, bitorder="little")  # must outlive the searches below
            selector = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
            reachable = min(k, int(allowed.sum()))
        if self.kind == EXACT or exact:
            similarities, rows = self._exact(queries, k, selector)
        else:
            parameters = faiss.SearchParametersHNSW(efSearch=ef)
            if selector is not None:
                parameters.sel = selector
            similarities, rows = self.index.search(queries, k, params=parameters)
            short = np.flatnonzero((rows >= 0).sum(1) < reachable)
            if len(short):  # the graph's neighbourhood was left out: search those queries exactly
                similarities[short], rows[short] = self._exact(queries[short], k, selector)
        del bitmap
        distances = np.where(rows >= 0, 1.0 - similarities, np.inf).astype(np.float32)
        return np.clip(distances, 0.0, None), rows.astype(np.int64)

    def _exact(self, queries: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray]:
        flat = self.index if self.kind == EXACT else faiss.downcast_index(self.index.storage)
        return flat.search(queries, k, params=None if selector is None else faiss.SearchParameters(sel=selector))

    def to_bytes(self) -> bytes:
        """The index as FAISS's own file format (``faiss.serialize_index``; no pickle)."""
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, size: int, dimension: int, ef_search: int = HNSW_EF_SEARCH) -> VectorIndex:
        """An index read from :meth:`to_bytes`'s bytes, checked to hold ``size`` vectors of ``dimension``.

        Raises:
            IndexFileError: not a FAISS index, not an inner-product flat or HNSW index, or another size.
        """
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as error:
            raise IndexFileError(f"not a FAISS index ({str(error).strip().splitlines()[0][:120]})") from None
        if not isinstance(index, (faiss.IndexFlatIP, faiss.IndexHNSWFlat)) or index.metric_type != \
                faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(f"a FAISS {type(index).__name__}, not an inner-product flat or HNSW index")
        if index.ntotal != size or index.d != dimension:
            raise IndexFileError(f"the index holds {index.ntotal} vectors of {index.d} numbers, the atlas "
                                 f"{size} of {dimension}")
        return cls(index, ef_search)
