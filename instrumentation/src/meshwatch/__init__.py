"""meshwatch: OpenTelemetry traces, RED metrics and correlated JSON logs for Python services."""

# The collector, demo and stack distributions install sub-packages of ``meshwatch``
# (``meshwatch.collector``, ...); extend_path lets them live in other folders, as
# with editable installs of this repository.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
