"""The Anthropic Messages API on the same port: POST /v1/messages (whole or streamed) and
/v1/messages/count_tokens. Errors are Anthropic's {"type": "error", "error": {...}} (errors.error_body, by path);
the key may come as x-api-key (middleware).

The request is converted into the OpenAI chat request (anthropic_request) and runs the shared chat path as every
chat API does; anthropic_shapes writes the answer.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from .anthropic_request import MessagesInput, chat_fields
from .errors import ClassifiedRoute
from .openai import State
from .translate import as_chat_request

router = APIRouter(route_class=ClassifiedRoute)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: MessagesInput, state: State) -> dict:
    """The prompt's length in tokens, as the model's template renders it."""
    chat = as_chat_request(chat_fields(body))
    served = await state.served(chat.model)
    return {"input_tokens": len(await asyncio.to_thread(served.chat_prompt, chat.messages))}
