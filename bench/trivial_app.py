"""The reference server for HTTP benchmarks: a FastAPI handler that reads the body and
answers 204, run by the same uvicorn set-up as the decision service. Whatever the
decision service costs beyond this is the decision itself."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/openrtb/2.6/bid")
    async def bid(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
