"""Built-in receivers: one module per type, each exposing ``factory``."""
