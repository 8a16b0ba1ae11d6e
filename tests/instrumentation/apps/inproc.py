"""One line of set-up: ``meshwatch.init()`` in the program itself, then a real server in the same process.

FRAMEWORK=fastapi: the app is created after init() (instrumented automatically).
FRAMEWORK=flask: the app is created before init() and handed over with init(app=...).
"""

import logging
import os

import meshwatch

FRAMEWORK = os.environ["FRAMEWORK"]
PORT = int(os.environ["PORT"])
log = logging.getLogger("inproc")

if FRAMEWORK == "flask":
    from flask import Flask

    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict:
        log.info("item served", extra={"item_id": item_id})
        return {"item": item_id}

    meshwatch.init(service_name=os.environ["SERVICE"], app=app, metrics_exporter="prometheus")
    app.run(host="127.0.0.1", port=PORT, threaded=True)
else:
    meshwatch.init(service_name=os.environ["SERVICE"], metrics_exporter=["prometheus"])
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        log.info("item served", extra={"item_id": item_id})
        return {"item": item_id}

    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
