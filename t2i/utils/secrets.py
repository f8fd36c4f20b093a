"""Secrets (HF token, OpenAI key) come from the environment only and never reach disk.

``redact`` is applied to everything t2i records (provenance, metrics, logs, report):
values of secret-looking keys are masked, and any occurrence of a secret that is set
in the environment is masked wherever it appears in a string.
"""
from __future__ import annotations

import os
import re
from typing import Any

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY")
# Keys whose last word names a secret: HF_TOKEN, access_token, OPENAI_API_KEY, Authorization
# (but not num_tokens, token_length or max_tokens, which are configuration).
_SECRET_KEY = re.compile(r"(^|[_.-])(token|secret|password|passwd|authorization|api[_-]?key|access[_-]?key)$",
                         re.IGNORECASE)
# Token shapes that must never be written even if they did not come from our env vars.
_TOKEN_PATTERNS = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_\-]{20,})\b")
MASK = "***"


def get_secret(name: str) -> str | None:
    """Read a secret from the environment (the only place secrets come from)."""
    value = os.environ.get(name)
    return value or None


def hf_token() -> str | None:
    return get_secret("HF_TOKEN") or get_secret("HUGGING_FACE_HUB_TOKEN")


def _env_secrets() -> list[str]:
    return [v for v in (os.environ.get(k) for k in SECRET_ENV_VARS) if v and len(v) >= 4]


def redact_text(text: str) -> str:
    for value in _env_secrets():
        text = text.replace(value, MASK)
    return _TOKEN_PATTERNS.sub(MASK, text)


def redact(obj: Any) -> Any:
    """Return a copy of ``obj`` with secrets masked (dicts, lists, strings)."""
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj
