"""The disk's own floor for an fsync-before-ack policy: write + fdatasync latency of one record.

The durable queue acknowledges a sender after the ``fdatasync`` that covers its record, so
no collector built that way can answer a sequential sender faster than this disk completes
an append + ``fdatasync``. This measures exactly that, with no collector, no Python threads
and no gRPC: one file opened ``O_APPEND`` in the folder the queue would use (by default a
fresh folder under the system temp dir, where ``sequential_cost.py`` puts its queues),
``writev`` of a record (a 32-byte header and the payload), ``fdatasync``, timed together,
``--samples`` times per record size. ``--gap-ms`` sleeps between samples, as a sequential
sender's request leaves the disk idle between fsyncs (0 = back to back).

Sizes run interleaved, ``--rounds`` times with the order reversed every other round.
Output: p50/p99/p99.9/max per size and round, and the medians over rounds, in
``--output`` (default ``bench/results/fsync-floor.json``) with the commit and load average.

    .venv/bin/python bench/collector/fsync_floor.py [--samples 2000] [--rounds 3] [--size 10240 --size 41220 ...]
        [--dir /path/on/the/queue/disk] [--gap-ms 1.0]
        [--mode append --mode overwrite]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, Recorder, loadavg, spread

#: A 100-span OTLP request (``sequential_cost.py``'s body) is 41,220 bytes.
SIZES = (10 * 1024, 41_220, 50 * 1024)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_round(directory: Path, size: int, samples: int, gap: float, mode: str = "append") -> dict[str, Any]:
    """``samples`` writes of ``size`` bytes, each followed by ``fdatasync``; latencies in ms.

    ``append`` grows the file (what the queue does: every fdatasync also commits the new file
    size, an ext4 journal commit); ``overwrite`` writes into a file zero-filled and synced
    beforehand, so the fdatasync has only data to flush.
    """
    header = os.urandom(32)
    payload = os.urandom(size)
    path = directory / f"floor-{mode}-{size}.q"
    if mode == "overwrite":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        zeros = bytes(1 << 20)
        for _ in range(samples * (size + 32) // len(zeros) + 1):
            os.write(fd, zeros)
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    folder = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(folder)  # the file's entry, so the samples time data only
    finally:
        os.close(folder)
    latencies: list[float] = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.writev(fd, [header, payload])
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - started) * 1000)
            if gap:
                time.sleep(gap)
    finally:
        os.close(fd)
        path.unlink()
    latencies.sort()
    return {
        "mode": mode,
        "size": size,
        "samples": samples,
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_quantile(latencies, 0.99), 3),
        "p999_ms": round(_quantile(latencies, 0.999), 3),
        "max_ms": round(latencies[-1], 3),
        "over_5ms": sum(1 for x in latencies if x > 5.0),
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, action="append", help="record bytes (repeatable)")
    parser.add_argument("--dir", type=Path, help="folder on the queue's disk (default: a fresh temp folder)")
    parser.add_argument("--mode", action="append", choices=["append", "overwrite"], help="repeatable")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="idle time between samples")
    parser.add_argument("--output", type=Path, default=RESULTS / "fsync-floor.json")
    args = parser.parse_args()
    recorder = Recorder(" ".join(["bench/collector/fsync_floor.py", *sys.argv[1:]]))
    cases = [(mode, size) for mode in args.mode or ["append"] for size in args.size or SIZES]
    directory = Path(tempfile.mkdtemp(prefix="fsync-floor-", dir=args.dir))
    rows = []
    for round_ in range(args.rounds):
        for mode, size in cases if round_ % 2 == 0 else cases[::-1]:
            row = {"round": round_, **one_round(directory, size, args.samples, args.gap_ms / 1000, mode)}
            rows.append(row)
            print(
                f"round {round_} {mode:<9} {size:>6} B: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                f"p99.9 {row['p999_ms']:.2f} ms, max {row['max_ms']:.1f} ms, >5 ms {row['over_5ms']}, "
                f"load {row['loadavg'][0]:.1f}",
                flush=True,
            )
    directory.rmdir()
    summary = {
        f"{mode} {size}": {
            key: spread([row[key] for row in rows if (row["mode"], row["size"]) == (mode, size)])
            for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms", "over_5ms")
        }
        for mode, size in cases
    }
    for case, figures in summary.items():
        print(f"{case} B: " + ", ".join(f"{key} {v['median']} ({v['min']}-{v['max']})" for key, v in figures.items()))
    filesystem = os.statvfs(directory.parent)
    recorder.write(
        args.output,
        {
            "directory": str(directory.parent),
            "filesystem_block_size": filesystem.f_bsize,
            "args": {k: str(v) for k, v in vars(args).items()},
            "summary": summary,
            "rounds": rows,
        },
    )


if __name__ == "__main__":
    main()
