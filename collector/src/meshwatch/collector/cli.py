"""``meshwatch-collector``: run or validate a collector config.

Exit codes: 0 stopped cleanly (or config valid), 1 could not start or a component
failed while running, 2 invalid config or command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-collector",
        description="Receive OTLP telemetry and deliver it durably: traces to Jaeger, metrics to Prometheus, "
        "logs to Elasticsearch. The config file is shaped like the OpenTelemetry Collector's.",
        epilog="Exit codes: 0 clean stop / valid config, 1 failed to start or failed while running, "
        "2 invalid config. SIGTERM or SIGINT stops gracefully: receivers first, then exporters drain "
        "(service.shutdown_timeout); what is left stays in the durable queues for the next start.",
    )
    parser.add_argument("--version", action="version", version=f"meshwatch-collector {__version__}")
    config_help = "collector config file (default: $MESHWATCH_COLLECTOR_CONFIG or ./collector.yaml)"
    parser.add_argument("--config", "-c", type=Path, help=config_help)
    workers_help = (
        "worker processes behind the same ports, each with its own queues (<storage>/worker-<i>): a number or "
        "'auto' (default: $MESHWATCH_COLLECTOR_WORKERS, else auto = one per core, or 1 when servicegraph or "
        "tail_sampling need every span of a trace in one process)"
    )
    parser.add_argument("--workers", help=workers_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the collector (the default command)")
    run.add_argument("--config", "-c", type=Path, dest="sub_config", help=config_help)
    run.add_argument("--workers", dest="sub_workers", help=workers_help)
    validate = sub.add_parser("validate", help="check a config file and exit (0 valid, 2 invalid)")
    validate.add_argument("--config", "-c", type=Path, dest="sub_config", help=config_help)
    sub.add_parser("components", help="list the component types this collector can build")
    return parser


def _config_path(args: argparse.Namespace) -> Path:
    # getattr: argparse sets ``sub_config`` only when the subcommand that defines it was given.
    chosen = getattr(args, "sub_config", None) or args.config
    if chosen:
        return chosen
    return Path(os.environ.get("MESHWATCH_COLLECTOR_CONFIG", "collector.yaml"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # gRPC core writes one plain-text stderr line per failed TLS handshake (a scanner, a
    # plaintext client retrying): a log flood outside the JSON log. Set before grpc loads;
    # GRPC_VERBOSITY=INFO or DEBUG in the environment still brings its lines back.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from .config import ConfigError, load_config
    from .logs import configure_logging

    if args.command == "components":
        from .component import Kind
        from .registry import Registry

        registry = Registry()
        for kind in Kind:
            print(f"{kind.value}s: {', '.join(registry.known_types(kind))}")
        return EXIT_OK

    configure_logging("warning" if args.command == "validate" else "info")
    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"meshwatch-collector: invalid config ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "validate":
        summary = ", ".join(
            f"{p.name} ({len(p.receivers)}→{len(p.processors)}→{len(p.exporters)})" for p in config.pipelines
        )
        print(f"{path}: valid; pipelines: {summary}")
        return EXIT_OK

    telemetry_cfg = config.service.telemetry.logs
    configure_logging(telemetry_cfg.level, telemetry_cfg.encoding)
    from .workers.supervisor import Supervisor, resolve_workers

    try:
        # getattr: ``sub_workers`` exists only when the ``run`` subcommand was given (argparse).
        count, reason = resolve_workers(getattr(args, "sub_workers", None) or args.workers, config)
    except ValueError as exc:
        print(f"meshwatch-collector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if count == 1:
        return _run(config)
    supervisor = Supervisor(config, count, reason)
    supervisor.install_signal_handlers()
    return supervisor.run()


def _run(config) -> int:
    from .graph import GraphError
    from .service import Collector

    log = logging.getLogger("meshwatch.collector")
    try:
        collector = Collector(config)
    except GraphError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    collector.install_signal_handlers()
    from ._heap import settle_heap

    # Before the receivers open: the collection it runs first holds the GIL for tens of ms.
    frozen = settle_heap()
    log.debug("froze %d start-up objects out of the garbage collector's full collections", frozen)
    try:
        collector.start()
    except (GraphError, OSError) as exc:
        log.error("cannot start: %s", exc)
        collector.stop(5.0)
        return EXIT_FAILED
    code = collector.wait()
    collector.stop()
    if code and collector.host.fatal_error:
        component, error = collector.host.fatal_error
        log.error("stopped because %s failed: %s", component, error)
    return code


if __name__ == "__main__":
    sys.exit(main())
