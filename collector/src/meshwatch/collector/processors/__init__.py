"""Built-in processors: one module per type, each exposing ``factory``."""
