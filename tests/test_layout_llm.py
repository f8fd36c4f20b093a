"""LayoutLLM's prompt and the OpenAI-compatible chat client (against a loopback fake server)."""
from __future__ import annotations

import json
import logging

import pytest
from openai_server import FakeOpenAI

from t2i.layout.llm import ChatLLM, LLMError
from t2i.layout.prompt import SYSTEM_MESSAGE, build_prompt

KEY = "sk-test-0123456789abcdefghijklmnop"

EXAMPLES = [
    {"caption": "a cat on a sofa", "objects": [{"name": "cat", "box": [0.123, 0.4, 0.3, 0.25]},
                                               {"name": "couch", "box": [0.0, 0.35, 1, 0.6449]}]},
    {"caption": "two dogs", "objects": [{"name": "dog", "box": [0.1, 0.2, 0.30000000000000004, 0.4]},
                                        {"name": "dog", "box": [0.5, 0.205, 0.3, 0.4]}]},
]
EXPECTED_PROMPT = (
    'Now you are an assistant to help me design a layout given a description. Concretely, a layout denotes '
    'a set of "object: bounding box" item. "object" means any object name in the world, while "bounding box" '
    'is formulated as [x, y, w, h], where "x, y" denotes the top left coordinate of the bounding box, "w" '
    'denotes the width, and "h" denotes the height. The six values "x, y, w, h, x+w, y+h" are all larger '
    'than 0 and smaller than 1. Next, I will give you several examples for you to understand this task.\n'
    '\ninput: a cat on a sofa\noutput: \ncat: [0.12, 0.4, 0.3, 0.25]\ncouch: [0.0, 0.35, 1, 0.64]\n'
    '\ninput: two dogs\noutput: \ndog: [0.1, 0.2, 0.3, 0.4]\ndog: [0.5, 0.2, 0.3, 0.4]\n'
    '\ninput: a bird over a lake (No explanation. Must give an output or try to imagine a possible output '
    'even if the given description is incomplete. )'
)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def make(srv: FakeOpenAI, tmp_path, **kw) -> ChatLLM:
    kw.setdefault("backoff_s", 0.001)
    return ChatLLM("gpt-test", base_url=srv.base_url, cache_dir=tmp_path / "cache", **kw)


def test_prompt_text_for_two_examples():
    assert build_prompt(EXAMPLES, "a bird over a lake") == EXPECTED_PROMPT


def test_prompt_needs_examples():
    with pytest.raises(ValueError, match="at least one"):
        build_prompt([], "q")
    with pytest.raises(ValueError, match="example 0 lacks objects"):
        build_prompt([{"caption": "x"}], "q")


def test_answer_key_and_request(key, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(answer=lambda body: "cat: [0.1, 0.2, 0.3, 0.4]") as srv:
        llm = make(srv, tmp_path, temperature=0.0, max_tokens=64, token_param="max_tokens")
        assert llm.complete("a cat") == "cat: [0.1, 0.2, 0.3, 0.4]"
    (req,) = srv.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body["model"] == "gpt-test" and req.body["temperature"] == 0.0 and req.body["max_tokens"] == 64
    assert req.body["messages"] == [{"role": "system", "content": SYSTEM_MESSAGE},
                                    {"role": "user", "content": "a cat"}]
    assert "presence_penalty" not in req.body and "frequency_penalty" not in req.body
    assert llm.queries == 1 and llm.cache_hits == 0
    assert caplog.records and not any(KEY in r.getMessage() for r in caplog.records)
    files = list((tmp_path / "cache").iterdir())
    assert [f.name for f in files] == [f"{llm.cache_key('a cat')}.json"]
    assert KEY not in files[0].read_text() and json.loads(files[0].read_text())["answer"].startswith("cat")


def test_penalties_sent_only_when_set(key, tmp_path):
    with FakeOpenAI() as srv:
        make(srv, tmp_path, presence_penalty=0.5).complete("p")
    assert srv.requests[0].body["presence_penalty"] == 0.5 and "frequency_penalty" not in srv.requests[0].body


def test_cache_hits_and_key_changes(key, tmp_path):
    with FakeOpenAI() as srv:
        llm = make(srv, tmp_path)
        first = llm.complete("a cat")
        assert make(srv, tmp_path).complete("a cat") == first  # a new client reads the same cache
        assert len(srv.requests) == 1
        llm.complete("a cat")
        assert len(srv.requests) == 1 and llm.cache_hits == 1 and llm.queries == 1
        make(srv, tmp_path, temperature=0.7).complete("a cat")
        assert len(srv.requests) == 2 and srv.requests[1].body["temperature"] == 0.7
        make(srv, tmp_path).complete("a dog")
        assert len(srv.requests) == 3


def test_rate_limit_then_success_is_retried(key, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2i.layout.llm")
    with FakeOpenAI(fail_first=2, fail_status=429) as srv:
        assert make(srv, tmp_path).complete("a cat").startswith("cat")
    assert len(srv.requests) == 3  # the openai client itself does not retry
    assert "HTTP 429" in caplog.text and "retry 2/5" in caplog.text


def test_server_errors_exhaust_retries(key, tmp_path):
    with FakeOpenAI(fail_first=100, fail_status=500) as srv:
        with pytest.raises(LLMError, match=r"'gpt-test'.*HTTP 500.*gave up after 3 attempts"):
            make(srv, tmp_path, retries=2).complete("a cat")
    assert len(srv.requests) == 3
    assert not (tmp_path / "cache").exists()


def test_connection_errors_are_retried(key, tmp_path):
    with FakeOpenAI() as srv:
        url = srv.base_url
    llm = ChatLLM("gpt-test", base_url=url, retries=1, backoff_s=0.001, timeout_s=2)
    with pytest.raises(LLMError, match="APIConnectionError.*gave up after 2 attempts"):
        llm.complete("a cat")


def test_max_completion_tokens_fallback(key, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2i.layout.llm")
    with FakeOpenAI(refuse_max_tokens=True) as srv:
        llm = make(srv, tmp_path, max_tokens=100)
        assert llm.complete("a cat").startswith("cat")
        llm.complete("a dog")
    bodies = [r.body for r in srv.requests]
    assert len(bodies) == 3 and bodies[0]["max_tokens"] == 100
    assert all("max_tokens" not in b and b["max_completion_tokens"] == 100 for b in bodies[1:])
    assert "refuses max_tokens" in caplog.text


def test_max_tokens_refusal_is_an_error_when_fixed(key, tmp_path):
    with FakeOpenAI(refuse_max_tokens=True) as srv:
        with pytest.raises(LLMError, match="HTTP 400.*max_completion_tokens"):
            make(srv, tmp_path, token_param="max_tokens").complete("a cat")
    assert len(srv.requests) == 1


def test_refused_temperature_is_dropped(key, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="t2i.layout.llm")
    with FakeOpenAI(refuse_max_tokens=True, refuse_temperature=True) as srv:
        assert make(srv, tmp_path).complete("a cat").startswith("cat")
    last = srv.requests[-1].body
    assert len(srv.requests) == 3 and "temperature" not in last and "max_completion_tokens" in last
    assert "refuses temperature" in caplog.text


def test_missing_key(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI() as srv:
        make(srv, tmp_path).complete("cached")
        monkeypatch.delenv("OPENAI_API_KEY")
        llm = make(srv, tmp_path)
        assert llm.complete("cached").startswith("cat")  # no key needed for a cached answer
        with pytest.raises(LLMError, match="OPENAI_API_KEY is not set"):
            llm.complete("new prompt")
        assert len(srv.requests) == 1


def test_no_auth_server(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as srv:
        make(srv, tmp_path, api_key_env=None).complete("a cat")
    assert srv.requests[0].headers["authorization"] == "Bearer none"


def test_empty_answer_is_an_error(key, tmp_path):
    with FakeOpenAI(answer=lambda body: None) as srv:
        with pytest.raises(LLMError, match="'gpt-test'.*no text answer"):
            make(srv, tmp_path).complete("a cat")


def test_from_config(key, tmp_path):
    cfg = {"model": "gpt-test", "temperature": 0.2, "max_tokens": 32, "token_param": "max_completion_tokens",
           "timeout_s": 5, "retries": 1, "api_key_env": "OPENAI_API_KEY", "presence_penalty": 0,
           "frequency_penalty": 0.1}
    with FakeOpenAI() as srv:
        llm = ChatLLM.from_config({**cfg, "base_url": srv.base_url}, tmp_path / "cache")
        llm.complete("a cat")
    body = srv.requests[0].body
    assert body["max_completion_tokens"] == 32 and body["frequency_penalty"] == 0.1 and body["temperature"] == 0.2
    with pytest.raises(ValueError, match="unknown LLM config keys: engine"):
        ChatLLM.from_config({**cfg, "engine": "x"}, None)
