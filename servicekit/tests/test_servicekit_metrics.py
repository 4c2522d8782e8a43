import httpx
from fastapi import APIRouter, FastAPI

from servicekit import ServiceSettings, install_servicekit
from testkit.metrics import label_values, value

router = APIRouter()


@router.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


def make_app(metrics_enabled: bool = True) -> FastAPI:
    app = FastAPI()
    settings = ServiceSettings(metrics_enabled=metrics_enabled)
    install_servicekit(app, service="kit", settings=settings)
    app.include_router(router, prefix="/api/v1")
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kit.test")


async def test_requests_are_counted_by_route_template_method_and_status() -> None:
    async with client(make_app()) as kit:
        before = (await kit.get("/metrics")).text
        for path in ("/api/v1/items/1", "/api/v1/items/2", "/api/v1/items/nope"):
            await kit.get(path)
        await kit.head("/api/v1/items/3")
        await kit.post("/api/v1/items/4")
        response = await kit.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    route = "/api/v1/items/{item_id}"

    def added(**labels: str) -> float:
        return value(text, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert added(route=route, method="GET", status="200") == 2
    assert added(route=route, method="GET", status="422") == 1
    assert added(route=route, method="HEAD", status="200") == 1
    assert added(route=route, method="POST", status="405") == 1
    assert value(text, "http_request_duration_seconds_count", route=route, method="GET") >= 3


async def test_unknown_paths_and_methods_add_no_label_values() -> None:
    async with client(make_app()) as kit:
        await kit.get("/api/v1/items/1")
        before = (await kit.get("/metrics")).text
        for n in range(200):
            await kit.request("GET", f"/random/{n}?q={n}")
            await kit.request(f"X{n}", "/api/v1/items/1")
        text = (await kit.get("/metrics")).text
    for label in ("route", "method", "status"):
        assert label_values(text, "http_requests_total", label) <= label_values(
            before, "http_requests_total", label
        ) | {"unmatched", "other", "404", "405"}
    assert value(text, "http_requests_total", route="unmatched", status="404") >= 200
    assert value(text, "http_requests_total", method="other") >= 200


async def test_metrics_can_be_turned_off() -> None:
    async with client(make_app(metrics_enabled=False)) as kit:
        response = await kit.get("/metrics")
    assert response.status_code == 404
