"""A loopback OpenAI-compatible chat server for tests.

    with FakeOpenAI(answer=lambda body: "cat: [0.1, 0.2, 0.3, 0.4]", fail_first=1) as srv:
        client = ChatLLM("gpt-test", base_url=srv.base_url)
        srv.requests  # what the client sent: json bodies and headers (lower-case names)

Serves ``POST /v1/chat/completions``. The first ``fail_first`` requests are answered with
``fail_status`` (429 or 500). ``refuse_max_tokens`` answers a request carrying ``max_tokens``
with OpenAI's 400 for reasoning models; ``refuse_temperature`` does the same for ``temperature``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from http_server import QuietHandler, ServerThread

MAX_TOKENS_ERROR = {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                               "Use 'max_completion_tokens' instead.",
                    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
TEMPERATURE_ERROR = {"message": "Unsupported value: 'temperature' does not support 0.0 with this model. "
                                "Only the default (1) value is supported.",
                     "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}
FAILURES = {429: {"message": "Rate limit reached for requests", "type": "requests", "param": None,
                  "code": "rate_limit_exceeded"},
            500: {"message": "The server had an error while processing your request.", "type": "server_error",
                  "param": None, "code": None}}


@dataclass
class ChatRequest:
    path: str
    body: dict
    headers: dict[str, str]  # names in lower case


class FakeOpenAI(ServerThread):
    """Threaded OpenAI-compatible chat server on 127.0.0.1 (a free port)."""

    def __init__(self, answer: Callable[[dict], str | None] = lambda body: "cat: [0.1, 0.2, 0.3, 0.4]", *,
                 fail_first: int = 0, fail_status: int = 429, refuse_max_tokens: bool = False,
                 refuse_temperature: bool = False) -> None:
        if fail_status not in FAILURES:
            raise ValueError(f"fail_status must be one of {sorted(FAILURES)}")
        self.answer = answer
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.refuse_max_tokens = refuse_max_tokens
        self.refuse_temperature = refuse_temperature
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.address + "/v1"

    def respond(self, path: str, body: dict) -> tuple[int, dict]:
        """Status and JSON reply for one request (already recorded)."""
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"Unknown path {path}", "type": "invalid_request_error",
                                   "param": None, "code": "unknown_url"}}
        if len(self.requests) <= self.fail_first:
            return self.fail_status, {"error": FAILURES[self.fail_status]}
        if self.refuse_max_tokens and "max_tokens" in body:
            return 400, {"error": MAX_TOKENS_ERROR}
        if self.refuse_temperature and "temperature" in body:
            return 400, {"error": TEMPERATURE_ERROR}
        return 200, self.completion(body, self.answer(body))

    @staticmethod
    def completion(body: dict, text: str | None) -> dict:
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 1700000000,
                "model": body.get("model", "unknown"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    def _handler_class(self):
        server = self

        class Handler(QuietHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.requests.append(ChatRequest(self.path, body,
                                                       {k.lower(): v for k, v in self.headers.items()}))
                    status, reply = server.respond(self.path.split("?")[0], body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
