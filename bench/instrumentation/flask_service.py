"""The benchmarked Flask service: ``GET /hello``, no instrumentation code (run under gunicorn)."""

from flask import Flask

app = Flask(__name__)


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}
