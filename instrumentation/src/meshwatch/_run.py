"""``meshwatch-run``: run an unmodified Python program with meshwatch set up (zero code).

Like ``opentelemetry-instrument``: the launcher puts a folder holding a
``sitecustomize`` module first on ``PYTHONPATH`` and replaces itself with the
command. Python imports ``sitecustomize`` at start-up, in the program and in
every Python process it starts (uvicorn's spawned workers, ``--reload``
children), and that module calls ``meshwatch.init()``. Forked workers
(gunicorn) inherit the set-up and re-initialise themselves after the fork.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ._config import PARAMS, ConfigError, resolve

__all__ = ["BOOTSTRAP_DIR", "main"]

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"

#: Launcher options: (flag, environment variable it sets).
_OPTIONS = {
    "service_name": "OTEL_SERVICE_NAME",
    "environment": "MESHWATCH_ENVIRONMENT",
    "endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "protocol": "OTEL_EXPORTER_OTLP_PROTOCOL",
    "sample_rate": "OTEL_TRACES_SAMPLER_ARG",
    "propagators": "OTEL_PROPAGATORS",
    "disabled_instrumentations": "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
}

_EPILOG = """\
examples:
  meshwatch-run uvicorn app:app --workers 4
  meshwatch-run --service-name checkout gunicorn -w 4 app:app
  meshwatch-run --endpoint http://collector:4317 python worker.py
  meshwatch-run --check          # show the settings and instrumentors, run nothing

Every meshwatch setting is read from its environment variable (OTEL_* or MESHWATCH_*);
the options above are shortcuts for the most common ones.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshwatch-run",
        description="Run a Python program with meshwatch traces, metrics and JSON logs, without changing its code.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, env in _OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="VALUE", help=f"sets {env}")
    parser.add_argument("--check", action="store_true", help="print the resolved settings and instrumentors, exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the program and its arguments")
    return parser


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for name, var in _OPTIONS.items():
        value = getattr(args, name)
        if value is not None:
            env[var] = value
    paths = [str(BOOTSTRAP_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["MESHWATCH_AUTO_INIT"] = "1"
    return env


def _check(env: dict[str, str]) -> int:
    from ._install_hint import install_command
    from ._instrumentors import INSTRUMENTORS, _discovered_conflict, _installed, discover

    settings = resolve(environ=env)
    print("meshwatch settings (argument = value  [environment variable]):")
    for name, param in PARAMS.items():
        value = getattr(settings, name)
        shown = "<set>" if param.secret and value else value
        print(f"  {name} = {shown!r}  [{', '.join(param.env_vars)}]")
    print("instrumentors:")
    for entry in INSTRUMENTORS:
        if not _installed(entry.library):
            state = f"skipped: {entry.library} not installed"
        elif not _installed(entry.module):
            state = f"skipped: {install_command(entry.extra)}"
        else:
            state = "available"
        print(f"  {entry.name:17} {state}")
    for found in discover():
        try:
            conflict = _discovered_conflict(found)
        except Exception as exc:
            conflict = f"requirements unreadable ({exc})"
        state = f"skipped: {conflict}" if conflict else "available"
        print(f"  {found.name:17} {state}  (entry point from {found.distribution})")
    from ._server_hooks import SERVERS

    servers = [server for server in SERVERS if _installed(server)]
    shown = ", ".join(servers) or "none installed"
    print(f"server spans, for apps no framework instrumentation traces: {shown if settings.server_spans else 'off'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    env = _environment(args)
    try:
        resolve(environ=env)  # fail here, with the variable named, not silently in the program
    except ConfigError as exc:
        print(f"meshwatch-run: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return _check(env)
    if not command:
        print("meshwatch-run: no command given (e.g. meshwatch-run uvicorn app:app); see --help", file=sys.stderr)
        return 2
    if not (BOOTSTRAP_DIR / "sitecustomize.py").is_file():  # pragma: no cover - broken install
        print("meshwatch-run: meshwatch's bootstrap module is missing; reinstall meshwatch", file=sys.stderr)
        return 1
    # The command may live beside this interpreter (a virtualenv that is not activated).
    search = os.pathsep.join(p for p in (env.get("PATH"), str(Path(sys.executable).parent)) if p)
    executable = shutil.which(command[0], path=search)
    if "OTEL_SERVICE_NAME" not in env and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        # Name the service from the command once, here: spawned workers (uvicorn --workers,
        # --reload) start as ``python -c ...`` and could not tell their name themselves.
        from ._resource import detect_service_name

        env["OTEL_SERVICE_NAME"] = detect_service_name(command)
    if executable is None:
        print(f"meshwatch-run: command not found: {command[0]}", file=sys.stderr)
        return 127
    try:
        os.execve(executable, command, env)  # noqa: S606 - replace this process, as a launcher does
    except OSError as exc:
        print(f"meshwatch-run: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 126
    return 0  # pragma: no cover - execve does not return


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
