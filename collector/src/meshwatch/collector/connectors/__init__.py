"""Built-in connectors: one module per type, each exposing ``factory``."""
