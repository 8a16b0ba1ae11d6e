"""A FastAPI app inside a plain ASGI middleware class of its own (as Sentry's or a custom one is):
the server sees the middleware, not FastAPI."""

from pricing import app as pricing


class Tagged:
    """Adds a response header; knows nothing of OpenTelemetry."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def tagged_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-tagged", b"1")]}
            await send(message)

        await self.app(scope, receive, tagged_send)


app = Tagged(pricing)
