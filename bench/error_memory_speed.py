"""Speed and size of the ReLoop2 error memory against exact kNN and faiss HNSW.

Measures, on random Gaussian hidden vectors:

* write throughput for ``--records`` records in batches of ``--batch`` (hashing + sketch
  update, and the sketch update alone as a replica applying ``errors`` records does);
* compensation latency of one request of ``--candidates`` candidates, hashing included
  (p50 / p99 over ``--requests`` requests);
* bytes held by the sketch;
* the same request latency for :class:`reloop.state.error_memory.knn.ExactKnnMemory` holding
  ``--knn-capacity`` rows (brute force, so only ``--knn-requests`` requests are timed) and
  for a faiss HNSW index of the same rows (null when faiss-cpu is not installed).

Usage::

    PYTHONPATH=. python bench/error_memory_speed.py --records 1000000 --dim 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
from reloop.state.error_memory.knn import ExactKnnMemory


def _percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
        "n": int(arr.size),
    }


def _hidden_batches(rng: np.random.Generator, total: int, batch: int, dim: int):
    for start in range(0, total, batch):
        n = min(batch, total - start)
        yield start, rng.standard_normal((n, dim), dtype=np.float32)


def bench_error_memory(args: argparse.Namespace) -> dict[str, object]:
    config = ErrorMemoryConfig(tables=args.tables, bits=args.bits)
    memory = ErrorMemory(args.dim, config)
    rng = np.random.default_rng(0)
    warm = rng.standard_normal((16, args.dim), dtype=np.float32)  # compile / load caches
    memory.write(memory.codes(warm), np.ones(16), np.full(16, 0.5), np.zeros(16))
    memory.compensate(np.full(16, 0.5), memory.codes(warm), 0.0)
    memory.reset()

    hash_s = write_s = 0.0
    ts0 = 1.7e9
    for start, hidden in _hidden_batches(rng, args.records, args.batch, args.dim):
        n = hidden.shape[0]
        y = (rng.random(n) < 0.1).astype(np.float64)
        p = rng.random(n)
        ts = ts0 + (start + np.arange(n)) * (86400.0 / args.records)  # one day of events
        t = time.perf_counter()
        codes = memory.codes(hidden)
        hash_s += time.perf_counter() - t
        t = time.perf_counter()
        memory.write(codes, y, p, ts)
        write_s += time.perf_counter() - t
    now = ts0 + 86400.0

    latencies = []
    p = rng.random(args.candidates)
    for _ in range(args.requests):
        hidden = rng.standard_normal((args.candidates, args.dim), dtype=np.float32)
        t = time.perf_counter()
        memory.compensate(p, memory.codes(hidden), now)
        latencies.append(time.perf_counter() - t)
    return {
        "config": {"tables": config.tables, "bits": config.bits, "tau": config.tau},
        "records": args.records,
        "batch": args.batch,
        "hash_records_per_s": args.records / hash_s,
        "write_records_per_s": args.records / write_s,
        "hash_and_write_records_per_s": args.records / (hash_s + write_s),
        "compensate": _percentiles_ms(latencies),
        "nbytes": memory.nbytes,
    }


def _fill_rows(rng: np.random.Generator, capacity: int, dim: int):
    for start, hidden in _hidden_batches(rng, capacity, 100_000, dim):
        yield hidden, (rng.random(hidden.shape[0]) < 0.1).astype(np.float64)


def bench_exact_knn(args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(1)
    knn = ExactKnnMemory(args.dim, args.knn_capacity, lam=0.5)
    for hidden, y in _fill_rows(rng, args.knn_capacity, args.dim):
        knn.write(hidden, y, rng.random(hidden.shape[0]), np.zeros(hidden.shape[0]))
    p = rng.random(args.candidates)
    knn.compensate(p[:2], rng.standard_normal((2, args.dim), dtype=np.float32), 0.0)  # compile
    latencies = []
    for _ in range(args.knn_requests):
        hidden = rng.standard_normal((args.candidates, args.dim), dtype=np.float32)
        t = time.perf_counter()
        knn.compensate(p, hidden, 0.0, k=args.k)
        latencies.append(time.perf_counter() - t)
    return {"capacity": args.knn_capacity, "k": args.k, "compensate": _percentiles_ms(latencies),
            "nbytes": knn.nbytes}


def bench_faiss_hnsw(args: argparse.Namespace) -> dict[str, object] | None:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        print("faiss-cpu (bench extra) is not installed: HNSW row recorded as null")
        return None
    rng = np.random.default_rng(1)
    index = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = 64
    labels = []
    t = time.perf_counter()
    for hidden, y in _fill_rows(rng, args.knn_capacity, args.dim):
        faiss.normalize_L2(hidden)
        index.add(hidden)
        labels.append(y)
    build_s = time.perf_counter() - t
    y_all = np.concatenate(labels)
    latencies = []
    for _ in range(args.requests):
        hidden = rng.standard_normal((args.candidates, args.dim), dtype=np.float32)
        t = time.perf_counter()
        faiss.normalize_L2(hidden)
        _, idx = index.search(hidden, args.k)
        _ = y_all[np.maximum(idx, 0)].mean(axis=1)
        latencies.append(time.perf_counter() - t)
    return {"capacity": args.knn_capacity, "k": args.k, "build_s": build_s,
            "compensate": _percentiles_ms(latencies)}


def _row(name: str, result: dict[str, object] | None) -> str:
    if result is None:
        return f"{name:<28} {'n/a':>10} {'n/a':>10} {'n/a':>14}"
    lat = result["compensate"]
    size = result.get("nbytes")
    size_text = f"{size / 1e6:.2f} MB" if isinstance(size, int) else "-"
    return f"{name:<28} {lat['p50_ms']:>10.3f} {lat['p99_ms']:>10.3f} {size_text:>14}"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=10_000, help="records per write batch")
    parser.add_argument("--tables", type=int, default=ErrorMemoryConfig().tables)
    parser.add_argument("--bits", type=int, default=ErrorMemoryConfig().bits)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--knn-capacity", type=int, default=1_000_000)
    parser.add_argument("--knn-requests", type=int, default=5)
    parser.add_argument("--k", type=int, default=32, help="neighbours for kNN / HNSW")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    args = parser.parse_args(argv)

    results: dict[str, object] = {
        "args": vars(args),
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "error_memory": bench_error_memory(args),
        "exact_knn": bench_exact_knn(args),
        "faiss_hnsw": bench_faiss_hnsw(args),
    }
    em = results["error_memory"]
    print(f"error memory K={args.tables} L={args.bits} d={args.dim}, {args.records} records "
          f"in batches of {args.batch}")
    print(f"  hash:          {em['hash_records_per_s']:>12,.0f} records/s")
    print(f"  sketch write:  {em['write_records_per_s']:>12,.0f} records/s")
    print(f"  hash + write:  {em['hash_and_write_records_per_s']:>12,.0f} records/s")
    print(f"\ncompensation of {args.candidates} candidates (hashing included)")
    print(f"{'memory':<28} {'p50 ms':>10} {'p99 ms':>10} {'size':>14}")
    print(_row("LSH error memory", em))
    print(_row(f"exact kNN ({args.knn_capacity} rows)", results["exact_knn"]))
    print(_row(f"faiss HNSW ({args.knn_capacity} rows)", results["faiss_hnsw"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
