"""``service.py`` with the contrib FastAPI instrumentor's ``send``/``receive`` spans off: one span per request.

contrib 0.66 reads no ``OTEL_PYTHON_FASTAPI_EXCLUDE_SPANS`` variable (the benchmark sets it
anyway), so under ``opentelemetry-instrument`` with the auto FastAPI instrumentation disabled
this module applies the same instrumentor with ``exclude_spans``, its documented argument.
"""

from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from service import app

FastAPIInstrumentor.instrument_app(app, exclude_spans=["send", "receive"])
