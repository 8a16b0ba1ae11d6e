"""Profile a running meshwatch-collector under a steady load with py-spy (sampling, no code changes).

Starts Jaeger (stack runner) and a collector (otlp → durable queue → otlp/jaeger, plus
spanmetrics → prometheus with --spanmetrics), measures its idle CPU, then loads it at
--rate spans/s and samples it for --seconds; prints the functions where its threads
spend their non-idle time (own time, then inclusive).

    .venv/bin/python bench/collector/profile.py [--rate 40000] [--seconds 15] [--spanmetrics]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _load import Load, ProcStats

from meshwatch.collector.testing import free_port, start_collector
from meshwatch.stack.runner import Stack

_IDLE = ("threading.py", "selectors.py", "epoll", "select (", "queue.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=40_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--spanmetrics", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshwatch-profile-"))
    state = tmp / "stack"
    state.mkdir()
    state.chmod(0o755)
    stack = Stack(state)
    try:
        jaeger = stack.start("jaeger", storage="memory")
        config: dict = {
            "receivers": {"otlp": {"protocols": {"grpc": {}}}},
            "exporters": {"otlp/jaeger": {"endpoint": jaeger.urls["otlp_grpc"], "tls": {"insecure": True}}},
            "service": {
                "telemetry": {"logs": {"level": "warning"}},
                "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/jaeger"]}},
            },
        }
        if args.spanmetrics:
            config["connectors"] = {"spanmetrics": {}}
            config["exporters"]["prometheus"] = {"endpoint": f"127.0.0.1:{free_port()}"}
            config["service"]["pipelines"]["traces"]["exporters"].append("spanmetrics")
            config["service"]["pipelines"]["metrics"] = {"receivers": ["spanmetrics"], "exporters": ["prometheus"]}
        collector = start_collector(config, tmp / "collector")
        stats = ProcStats(collector.process.pid)
        before = stats.cpu_seconds()
        time.sleep(10)
        print(f"idle: {(stats.cpu_seconds() - before) / 10:.3f} cores")
        load = Load(collector.grpc_endpoint, processes=2, threads=4, rate=args.rate / 512).start()
        time.sleep(3)
        raw = tmp / "profile.txt"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(collector.process.pid),
                "-d",
                str(int(args.seconds)),
                "-r",
                "200",
                "--format",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            capture_output=True,
            check=True,
        )
        load.stop()
        collector.stop()
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack_text, _, count = line.rpartition(" ")
            frames = stack_text.split(";")
            if any(word in frames[-1] for word in _IDLE):
                continue
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
        print(f"{total} non-idle samples at {args.rate:,.0f} spans/s; own time:")
        for frame, count in own.most_common(20):
            print(f"  {count / total:6.1%}  {frame}")
        print("inclusive:")
        for frame, count in inclusive.most_common(30)[3:]:
            print(f"  {count / total:6.1%}  {frame}")
    finally:
        stack.down()


if __name__ == "__main__":
    main()
