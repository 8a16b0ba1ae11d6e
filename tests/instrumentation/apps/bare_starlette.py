"""A Starlette app (no FastAPI): traced by the contrib Starlette instrumentor when it is applied,
else by the server's span, which reads Starlette's matched route from the scope."""

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def item(request):
    return PlainTextResponse(f"item {request.path_params['item']}")


app = Starlette(routes=[Route("/items/{item}", item)])
