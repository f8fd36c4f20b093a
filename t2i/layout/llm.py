"""A chat LLM behind any OpenAI-compatible endpoint, with our own retries and a disk cache.

``ChatLLM.complete(prompt)`` sends LayoutLLM's two messages (system + user) and returns the
answer text. Answers are cached as ``<sha256>.json`` under ``cache_dir``, keyed by the model,
the endpoint, the messages and the sampling parameters requested, so reruns never re-query.
The API key is read from the environment (``api_key_env``) only when a real query is needed;
it is never logged, cached or kept on the object.

Servers differ in what they accept: with ``token_param="auto"`` the token limit goes out as
``max_tokens`` and, if the server refuses that (OpenAI's reasoning models do), once more as
``max_completion_tokens``; a refused ``temperature`` is dropped. Both adaptations are logged
and kept for later queries; they do not change the cache key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import openai

from t2i.layout.prompt import SYSTEM_MESSAGE
from t2i.utils.atomic import atomic_write_json
from t2i.utils.secrets import get_secret, redact_text

log = logging.getLogger(__name__)

TOKEN_PARAMS = ("max_tokens", "max_completion_tokens", "auto")
CONFIG_KEYS = ("model", "base_url", "temperature", "max_tokens", "token_param", "timeout_s", "retries",
               "api_key_env", "presence_penalty", "frequency_penalty", "backoff_s")
NO_AUTH_KEY = "none"  # sent when ``api_key_env`` is None (a local server without auth)
_RETRYABLE = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)


class LLMError(RuntimeError):
    """A chat completion that could not be obtained (or gave no text)."""


class ChatLLM:
    """One chat model at one endpoint; ``complete(prompt) -> str``.

    ``queries`` counts answers fetched from the server, ``cache_hits`` answers read from ``cache_dir``.
    """

    def __init__(self, model: str, *, base_url: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 512, token_param: str = "auto", presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, timeout_s: float = 60.0, retries: int = 5,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | Path | None = None, system_message: str = SYSTEM_MESSAGE) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"ChatLLM model must be a non-empty string, got {model!r}")
        if token_param not in TOKEN_PARAMS:
            raise ValueError(f"token_param {token_param!r} is not one of {', '.join(TOKEN_PARAMS)}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.model = model
        self.base_url = base_url.rstrip("/") if base_url else None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.api_key_env = api_key_env
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.system_message = system_message
        self._token_param = "max_tokens" if token_param == "auto" else token_param
        self._token_auto = token_param == "auto"
        self._send_temperature = True
        self._client: openai.OpenAI | None = None
        self.queries = 0
        self.cache_hits = 0

    @classmethod
    def from_config(cls, cfg: dict, cache_dir: str | Path | None) -> "ChatLLM":
        """Build from a config dict (keys: ``CONFIG_KEYS``; ``model`` is required)."""
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown LLM config keys: {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})")
        if "model" not in cfg:
            raise ValueError("LLM config lacks 'model'")
        return cls(**cfg, cache_dir=cache_dir)

    def __repr__(self) -> str:
        return f"ChatLLM(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------------------------ public

    def messages(self, prompt: str) -> list[dict]:
        return [{"role": "system", "content": self.system_message}, {"role": "user", "content": prompt}]

    def sampling_params(self) -> dict[str, Any]:
        """The sampling parameters requested (penalties only when non-zero); part of the cache key."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.presence_penalty:
            params["presence_penalty"] = self.presence_penalty
        if self.frequency_penalty:
            params["frequency_penalty"] = self.frequency_penalty
        return params

    def cache_key(self, prompt: str) -> str:
        """sha256 of the canonical JSON of model, endpoint, messages and sampling parameters."""
        material = {"model": self.model, "base_url": self.base_url, "messages": self.messages(prompt),
                    **self.sampling_params()}
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def complete(self, prompt: str) -> str:
        """The answer text for ``prompt``, from the cache when there is one."""
        key = self.cache_key(prompt)
        cached = self._read_cache(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        log.info("LLM query: model %s at %s (cache key %s)", self.model, self.base_url or "OpenAI", key[:12])
        response = self._create(self.messages(prompt))
        answer = self._answer_text(response)
        self.queries += 1
        self._write_cache(key, prompt, response, answer)
        return answer

    # ---------------------------------------------------------------------------------- the client

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return NO_AUTH_KEY
        key = get_secret(self.api_key_env)
        if key is None:
            raise LLMError(f"environment variable {self.api_key_env} is not set: model {self.model!r} needs an "
                           f"API key to query (set api_key_env: null for a local server without auth)")
        return key

    def client(self) -> openai.OpenAI:
        """The openai client (built on first use; it does no retries of its own)."""
        if self._client is None:
            self._client = openai.OpenAI(api_key=self._api_key(), base_url=self.base_url,
                                         timeout=self.timeout_s, max_retries=0)
        return self._client

    def _wire_params(self) -> dict[str, Any]:
        params = self.sampling_params()
        tokens = params.pop("max_tokens")
        if tokens is not None:
            params[self._token_param] = tokens
        if not self._send_temperature:
            params.pop("temperature")
        return params

    def _create(self, messages: list[dict]):
        attempt = 0
        while True:
            try:
                return self.client().chat.completions.create(model=self.model, messages=messages,
                                                             **self._wire_params())
            except openai.BadRequestError as err:
                if not self._adapt(err):
                    raise LLMError(self._describe(err)) from None
            except openai.APIStatusError as err:
                if not (isinstance(err, _RETRYABLE) or err.status_code >= 500):
                    raise LLMError(self._describe(err)) from None
                attempt = self._wait_or_give_up(attempt, err)
            except _RETRYABLE as err:
                attempt = self._wait_or_give_up(attempt, err)

    def _adapt(self, err: openai.BadRequestError) -> bool:
        """Change what is sent after a 400 that refuses ``max_tokens`` or ``temperature``; False if neither."""
        message = str(err.message).lower()
        param = (err.param or "").lower()
        if (self._token_auto and self._token_param == "max_tokens"
                and (param == "max_tokens" or "max_completion_tokens" in message)):
            self._token_param = "max_completion_tokens"
            log.warning("model %s refuses max_tokens; sending max_completion_tokens from now on", self.model)
            return True
        if self._send_temperature and (param == "temperature" or (
                "temperature" in message and ("unsupported" in message or "not support" in message))):
            self._send_temperature = False
            log.warning("model %s refuses temperature=%s; sending no temperature (the server default) from now on",
                        self.model, self.temperature)
            return True
        return False

    def _wait_or_give_up(self, attempt: int, err: Exception) -> int:
        """Sleep before retry ``attempt + 1`` (exponential backoff with jitter), or raise after the last."""
        attempt += 1
        if attempt > self.retries:
            raise LLMError(f"{self._describe(err)}; gave up after {attempt} attempts") from None
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        log.warning("%s; retry %d/%d in %.2fs", self._describe(err), attempt, self.retries, delay)
        time.sleep(delay)
        return attempt

    def _describe(self, err: Exception) -> str:
        status = getattr(err, "status_code", None)
        what = f"HTTP {status}" if status is not None else type(err).__name__
        message = redact_text(str(getattr(err, "message", err)))
        return f"chat completion for model {self.model!r} at {self.base_url or 'OpenAI'} failed: {what}: {message}"

    def _answer_text(self, response) -> str:
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices else None
        if not isinstance(content, str) or not content.strip():
            reason = choices[0].finish_reason if choices else "no choices"
            raise LLMError(f"model {self.model!r} at {self.base_url or 'OpenAI'} returned no text answer "
                           f"(content {content!r}, finish_reason {reason!r})")
        return content

    # -------------------------------------------------------------------------------------- cache

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir is not None else None

    def _read_cache(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            answer = json.loads(path.read_text(encoding="utf-8"))["answer"]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable LLM cache file %s (%s)", path, err)
            return None
        return answer if isinstance(answer, str) else None

    def _write_cache(self, key: str, prompt: str, response, answer: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        usage = getattr(response, "usage", None)
        atomic_write_json(path, {
            "key": key, "model": self.model, "base_url": self.base_url, "messages": self.messages(prompt),
            "requested": self.sampling_params(), "sent": self._wire_params(),
            "response_model": getattr(response, "model", None),
            "usage": usage.model_dump() if usage is not None else None, "answer": answer})
