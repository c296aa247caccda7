"""The Anthropic Messages API on the same port: POST /v1/messages (whole or streamed) and
/v1/messages/count_tokens. Errors are Anthropic's {"type": "error", "error": {...}} (errors.error_body, by path);
the key may come as x-api-key (middleware).

The request is converted into the OpenAI chat request (anthropic_request) and runs the shared chat path as every
chat API does; anthropic_shapes writes the answer.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .anthropic_request import MessagesInput, MessagesRequest, chat_fields
from .anthropic_shapes import MessageShapes
from .chat_plan import plan_chat
from .errors import ClassifiedRoute
from .one_answer import answer
from .state import State
from .translate import as_chat_request

router = APIRouter(route_class=ClassifiedRoute)


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request, state: State) -> Response:
    chat = as_chat_request(chat_fields(body))
    served = await state.served(chat.model)
    shapes = MessageShapes(served.name, served.model.tokenizer, body.stop_sequences or ())
    return await answer(request, state, served, chat, shapes)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: MessagesInput, state: State) -> dict:
    """The prompt's length in tokens, as the model's template renders it (tools included)."""
    chat = as_chat_request(chat_fields(body))
    served = await state.served(chat.model)
    return {"input_tokens": len((await asyncio.to_thread(plan_chat, served, chat)).prompt_ids)}
