from typing import Annotated

from fastapi import Depends, Request

from llm_service.chat.exceptions import LLMNotConfigured
from llm_service.chat.service import ChatService


async def get_chat_service(request: Request) -> ChatService:
    service: ChatService | None = request.state.chat
    if service is None:
        raise LLMNotConfigured("OPENAI_API_KEY is not set on the LLM service.")
    return service


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
