"""The ReLoop2 error memory: an LSH sketch of recent errors (``memory``), its numba kernels
beside their numpy references (``kernels``), and the exact-kNN baseline (``knn``)."""
