"""meshwatch demo mesh: FastAPI services that call each other, load generation and fault injection."""

__version__ = "0.1.0"
