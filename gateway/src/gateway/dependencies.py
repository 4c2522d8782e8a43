from typing import Annotated

from fastapi import Depends, Request

from gateway.config import Settings
from gateway.upstreams import Upstream


async def get_upstreams(request: Request) -> dict[str, Upstream]:
    upstreams: dict[str, Upstream] = request.state.upstreams
    return upstreams


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


UpstreamsDep = Annotated[dict[str, Upstream], Depends(get_upstreams)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
