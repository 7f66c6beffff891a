"""A hub id without a network fails at once with a clear reason, not after huggingface_hub's
five retries with backoff (~25 s, a "Retrying" warning each)."""

from __future__ import annotations

import logging
import socket

import pytest
from huggingface_hub import constants

from encoders import WeightsUnavailableError, load_encoder


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_hub_fails_once_with_the_model_and_what_to_do(
    monkeypatch, caplog, closed_port: int
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    calls: list[object] = []
    # Any HTTP request to the hub would mean its retries ran; none may be made.
    import huggingface_hub.utils._http as hub_http

    real = hub_http.http_backoff
    monkeypatch.setattr(hub_http, "http_backoff", lambda *a, **k: calls.append(a) or real(*a, **k))

    with caplog.at_level(logging.WARNING), pytest.raises(WeightsUnavailableError) as raised:
        load_encoder("clip-vit-base-patch32", source="example-org/no-such-model", device="cpu")

    message = str(raised.value)
    assert "clip-vit-base-patch32" in message and "example-org/no-such-model" in message
    assert f"the Hugging Face hub ({endpoint}) is not reachable" in message
    assert "not in the local cache" in message
    assert "EMBEDDING_MODEL_SOURCES" in message  # what to do
    assert "Retrying" not in caplog.text
    assert calls == []
