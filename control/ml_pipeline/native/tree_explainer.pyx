# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Exact per-feature contributions (path-dependent TreeSHAP) of a model's answers, from its packed trees.

The trees are the ones the compiler packed beside the model's library (ml_pipeline.explain.packing), checked
by their sha256 like the library; the arithmetic lives in native/src/explain.c and runs without the GIL.
"""

import hashlib

import numpy as np

cimport numpy as cnp

from libc.stdlib cimport free, malloc

from ml_pipeline.native.explain_api cimport (
    vg_forest_bias,
    vg_forest_contributions,
    vg_forest_free,
    vg_forest_load,
    vg_forest_margin,
    vg_forest_num_features,
    vg_forest_num_trees,
    vg_forest_set_feature_names,
)

from ml_pipeline.errors import JobFailed

cnp.import_array()

cdef enum:
    ERR_LEN = 512


class ExplainerLoadError(JobFailed):
    """Packed trees could not be loaded: not the packed format, inconsistent, or not the expected sha256."""


cdef class TreeExplainer:
    """Contributions of each feature to a model's margin, for one row or many (`contributions`).

    `TreeExplainer(data, sha256=None, feature_names=None)` takes the packed trees' bytes (refused when `sha256`
    is given and differs) and the names reasons give the features (default f0, f1, ...);
    `TreeExplainer.from_file(path, sha256=None, feature_names=None)` reads them first."""

    def __cinit__(self, bytes data, str sha256=None, feature_names=None):
        self._forest = NULL
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ExplainerLoadError(f"packed trees have sha256 {digest}, not the recorded {sha256}")
        cdef char err[ERR_LEN]
        err[0] = 0
        cdef const unsigned char[::1] view = data
        self._forest = vg_forest_load(&view[0] if len(data) else NULL, len(data), err, ERR_LEN)
        if self._forest == NULL:
            raise ExplainerLoadError(err.decode(errors="replace"))
        self.sha256 = digest
        n = vg_forest_num_features(self._forest)
        names = tuple(feature_names) if feature_names is not None else tuple(f"f{i}" for i in range(n))
        encoded = [name.encode("utf-8") for name in names]
        cdef const char **pointers = <const char **>malloc(max(len(encoded), 1) * sizeof(char *))
        if pointers is NULL:
            raise MemoryError("cannot allocate the feature names")
        try:
            for i, name in enumerate(encoded):
                pointers[i] = name
            if vg_forest_set_feature_names(self._forest, pointers, len(encoded), err, ERR_LEN) != 0:
                raise ExplainerLoadError(err.decode(errors="replace"))
        finally:
            free(pointers)
        self.feature_names = names

    def __dealloc__(self):
        vg_forest_free(self._forest)

    @classmethod
    def from_file(cls, path, sha256=None, feature_names=None):
        """The explainer of the packed trees at `path` (ExplainerLoadError when unreadable or not `sha256`)."""
        try:
            with open(path, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise ExplainerLoadError(f"cannot read packed trees {path}: {exc.strerror or exc}") from None
        return cls(data, sha256, feature_names)

    @property
    def num_features(self) -> int:
        """Features per row."""
        return vg_forest_num_features(self._forest)

    @property
    def num_trees(self) -> int:
        """Trees of the model."""
        return vg_forest_num_trees(self._forest)

    @property
    def bias(self) -> float:
        """The margin with nothing known: the base margin plus each tree's expected value."""
        return vg_forest_bias(self._forest)

    def _rows(self, rows):
        array = np.ascontiguousarray(rows, dtype=np.float32)
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != self.num_features:
            raise ValueError(f"expected rows of {self.num_features} features, got shape {np.shape(rows)}")
        return array

    def contributions(self, rows):
        """(n, num_features + 1) float64: each feature's contribution to the margin, and the bias last;
        a row's values sum to its margin. `rows` is one row or an (n, num_features) array (NaN = missing)."""
        cdef const float[:, ::1] data = self._rows(rows)
        out = np.empty((data.shape[0], data.shape[1] + 1), dtype=np.float64)
        cdef double[:, ::1] phi = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(data.shape[0]):
                vg_forest_contributions(self._forest, &data[i, 0], &phi[i, 0])
        return out

    def margins(self, rows):
        """(n,) float64: each row's margin (sum of its leaves and the base margin), for checks."""
        cdef const float[:, ::1] data = self._rows(rows)
        out = np.empty(data.shape[0], dtype=np.float64)
        cdef double[::1] margin = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(data.shape[0]):
                margin[i] = vg_forest_margin(self._forest, &data[i, 0])
        return out
