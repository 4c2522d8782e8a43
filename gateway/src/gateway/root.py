"""`GET /`: what this API is and where its parts are."""

from fastapi import APIRouter

from gateway import __version__
from gateway.schemas import RootInfo
from gateway.upstreams import API_PREFIX

DESCRIPTION = "Public API gateway for the audits and LLM services."

router = APIRouter()


@router.get("/", summary="What this API is and where its parts are", tags=["gateway"])
async def root() -> RootInfo:
    return RootInfo(
        name="gateway",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_url="/openapi.json",
        health_url="/health",
        api_prefix=API_PREFIX,
    )
