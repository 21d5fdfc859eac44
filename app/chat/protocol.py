"""The WebSocket wire protocol: frames a client may send, and the errors it may get.

README.md, section "WebSocket protocol", documents the same frames and codes.
"""

import json
from enum import IntEnum
from typing import Annotated, Literal
from urllib.parse import parse_qs

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)


class CloseCode(IntEnum):
    """Close codes the server uses: RFC 6455's 1001, and 4000 + HTTP status for the application's.

    (RFC 6455's 1013 "try again later" would fit UNAVAILABLE, but Autobahn lets a
    server send only 1000 or 3000-4999; 1001 goes out through chat_site/graceful_daphne.py.)
    """

    GOING_AWAY = 1001  # the server process is stopping: reconnect, and resend what was not acknowledged
    BAD_REQUEST = 4400  # the connect URL's parameters are invalid
    ROOM_NOT_FOUND = 4404
    UNAVAILABLE = 4503  # the database is unavailable; reconnect later


CLIENT_ID_MAX_CHARS = 64


class ProtocolError(Exception):
    """A problem the client caused or must handle; sent as an error frame.

    ``client_id`` names the message the error concerns; the frame carries it when set.
    """

    def __init__(self, code: str, message: str, client_id: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id

    def frame(self) -> dict:
        frame = {"type": "error", "code": self.code, "message": self.message}
        if self.client_id:
            frame["client_id"] = self.client_id
        return frame


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SendMessage(_Frame):
    type: Literal["message"]
    text: str
    client_id: str = Field(default="", max_length=CLIENT_ID_MAX_CHARS)

    @field_validator("text")
    @classmethod
    def _text_fits(cls, text: str, info: ValidationInfo) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        limit = info.context["max_text_chars"]
        if len(text) > limit:
            raise ValueError(f"is longer than {limit} characters")
        return text


class HistoryRequest(_Frame):
    type: Literal["history"]
    limit: int = Field(default=20, ge=1)

    @field_validator("limit")
    @classmethod
    def _limit_fits(cls, limit: int, info: ValidationInfo) -> int:
        if limit > info.context["history_max"]:
            raise ValueError(f"must be at most {info.context['history_max']}")
        return limit


ClientFrame = TypeAdapter(Annotated[SendMessage | HistoryRequest, Field(discriminator="type")])


def parse_frame(raw: str, *, max_text_chars: int, history_max: int) -> SendMessage | HistoryRequest:
    """Validate one text frame, or raise ProtocolError naming what is wrong."""
    context = {"max_text_chars": max_text_chars, "history_max": history_max}
    try:
        return ClientFrame.validate_json(raw, context=context)
    except ValidationError as exc:
        raise _protocol_error(exc) from None


def peek_client_id(raw: str | bytes, *, max_length: int) -> str:
    """The client_id of a frame that is refused, so that its error can name it; "" when it has none.

    Only a JSON object whose ``client_id`` is a string of at most 64 characters has
    one: nothing else could have been stored under an id. A plain ``json.loads``,
    no validation, and only for a refused frame: an accepted frame is parsed once.
    Frames longer than ``max_length`` are not parsed. Daphne lets frames of up to
    1 MiB through, and json.loads took 1 ms for a 1 MiB message that is mostly
    text but 47 ms for 1 MiB of small numbers, on the event loop, per refused frame
    (2-core test machine); the caller bounds that cost.
    """
    if len(raw) > max_length:
        return ""
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested too deep
        return ""
    client_id = frame.get("client_id") if isinstance(frame, dict) else None
    if isinstance(client_id, str) and len(client_id) <= CLIENT_ID_MAX_CHARS:
        return client_id
    return ""


def _protocol_error(exc: ValidationError) -> ProtocolError:
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    if kind == "json_invalid":
        return ProtocolError("invalid_json", "the frame is not valid JSON")
    if kind == "union_tag_invalid":
        return ProtocolError("unknown_type", 'unknown "type"; expected "message" or "history"')
    if kind == "union_tag_not_found":
        return ProtocolError("invalid_frame", 'the frame has no "type" field')
    if kind == "model_attributes_type":
        return ProtocolError("invalid_frame", "the frame must be a JSON object")
    field = ".".join(str(part) for part in error["loc"][1:]) or "frame"
    message = error["msg"].removeprefix("Value error, ")
    return ProtocolError("invalid_frame", f"{field}: {message}")


def parse_author(query_string: bytes) -> str:
    """The display name from the connect URL's ``?name=``, 1-40 printable characters."""
    values = parse_qs(query_string.decode("latin-1")).get("name", [])
    name = values[-1].strip() if values else "anonymous"
    if not 1 <= len(name) <= 40 or not name.isprintable():
        raise ProtocolError("invalid_name", "name must be 1-40 printable characters")
    return name
