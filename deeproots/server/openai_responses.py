"""The OpenAI Responses API on the same port: POST /v1/responses (whole or streamed), stateless. Errors are
OpenAI's, as on the other /v1 routes.

The request is converted into the OpenAI chat request (openai_responses_request) and runs the shared chat path as
every chat API does; openai_responses_shapes writes the answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import ClassifiedRoute
from .one_answer import answer
from .state import State
from .openai_responses_request import ResponsesRequest, chat_fields
from .openai_responses_shapes import ResponseShapes
from .translate import as_chat_request

router = APIRouter(route_class=ClassifiedRoute)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request, state: State) -> Response:
    chat = as_chat_request(chat_fields(body))
    served = await state.served(chat.model)
    return await answer(request, state, served, chat, ResponseShapes(served.name, body))
