#!/usr/bin/env python3
"""Reads the first LIMIT files of LISTING under ROOT with READERS threads;
prints the median time of one read (ms) and the wall time of all (ms).

    readtime.py ROOT LISTING LIMIT READERS

Used by bench-registry.sh and bench-wan.sh.
"""
import statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
root, listing, limit, readers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def read(path):
    start = time.perf_counter()
    with open(f"{root}/{path}", "rb") as f:
        f.read()
    return (time.perf_counter() - start) * 1000
paths = [p for p in open(listing).read().split('\n')[:limit] if p]
start = time.perf_counter()
with ThreadPoolExecutor(readers) as pool:
    times = list(pool.map(read, paths))
print(f"{statistics.median(times):.2f} {(time.perf_counter() - start) * 1000:.0f}")
