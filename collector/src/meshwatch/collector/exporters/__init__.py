"""Built-in exporters: one module per type, each exposing ``factory``."""
