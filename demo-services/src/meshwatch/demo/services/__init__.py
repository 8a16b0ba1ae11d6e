"""The demo mesh: one module per service, each exposing a FastAPI ``app``.

::

    loadgen ─▶ gateway ─▶ orders ─┬─▶ inventory ──▶ Redis, SQL
                                  ├─▶ payments ──(uber-trace-id)──▶ fraud (legacy, zero code)
                                  ├─▶ SQL
                                  └─▶ NATS JetStream ┈┈▶ notifications ──▶ Redis
"""
