#!/usr/bin/env python3
"""Synchronous direct writes on this machine's disk, as the write-ahead log does them.

Each writer thread does `pwrite` of one 4 KiB block with O_DIRECT | O_DSYNC into a
preallocated file (its own blocks, no two threads on one block), N times; the probe prints
writes per second and latency percentiles for 1, 2, 3 and 4 writers at once. It answers
whether the device serves synchronous writes in parallel (docs/benchmarks.md, "Two log
writes in flight").

    python3 scripts/disk_probe.py [DIR] [--writes N]    # DIR: default target/ (same disk as the store)
"""
import argparse
import mmap
import os
import tempfile
import threading
import time

BLOCK = 4096
SIZE = 64 << 20


def writer(path, index, threads, count, latencies):
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
    try:
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        buf.write(b"x" * BLOCK)
        offset = index * BLOCK
        for _ in range(count):
            start = time.perf_counter()
            os.pwrite(fd, buf, offset)
            latencies.append(time.perf_counter() - start)
            offset = (offset + threads * BLOCK) % SIZE
    finally:
        os.close(fd)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", nargs="?", default="target")
    parser.add_argument("--writes", type=int, default=3000, help="per writer thread")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=args.dir, prefix="disk-probe-")
    try:
        # Written zeros, synced: no block allocation inside the timed writes (like the log).
        os.write(fd, b"\0" * SIZE)
        os.fsync(fd)
        os.close(fd)
        for threads in (1, 2, 3, 4):
            latencies = []
            pool = [
                threading.Thread(target=writer, args=(path, i, threads, args.writes, latencies))
                for i in range(threads)
            ]
            start = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            elapsed = time.perf_counter() - start
            latencies.sort()
            pct = lambda q: latencies[int(len(latencies) * q)] * 1e6
            print(
                f"writers {threads}: {threads * args.writes / elapsed:8.0f} writes/s"
                f"  p50 {pct(0.5):4.0f} µs  p90 {pct(0.9):4.0f} µs  p99 {pct(0.99):4.0f} µs"
            )
    finally:
        os.remove(path)


if __name__ == "__main__":
    main()
