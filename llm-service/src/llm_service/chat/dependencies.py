from typing import Annotated

from fastapi import Depends, Request

from llm_service.chat.exceptions import LLMNotConfigured
from llm_service.chat.service import ChatService
from llm_service.chat.wire import WireService

_NOT_CONFIGURED = "OPENAI_API_KEY is not set on the LLM service."


async def get_chat_service(request: Request) -> ChatService:
    service: ChatService | None = request.state.chat
    if service is None:
        raise LLMNotConfigured(_NOT_CONFIGURED)
    return service


async def get_wire_service(request: Request) -> WireService:
    service: WireService | None = request.state.wire
    if service is None:
        raise LLMNotConfigured(_NOT_CONFIGURED)
    return service


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
WireServiceDep = Annotated[WireService, Depends(get_wire_service)]
