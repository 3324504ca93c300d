"""Redaction masks whole secret values only, and a credential too short to mask safely is reported."""

from __future__ import annotations

import logging

import httpx
import pytest

from providers.http import MIN_REDACTABLE_SECRET, ProviderHTTP, redact


def test_a_short_secret_masks_only_itself_not_every_letter() -> None:
    text = "the token t was sent to test.example: t"
    assert redact(text, secrets=["t"]) == "the token *** was sent to test.example: ***"


def test_a_secret_inside_a_longer_token_is_not_a_match_but_a_whole_one_is() -> None:
    secret = "abc123"
    assert redact("key=abc123&x=1", secrets=[secret]) == "key=***&x=1"
    assert redact('{"key": "abc123"}', secrets=[secret]) == '{"key": "***"}'
    assert redact("id xabc123 and abc1234", secrets=[secret]) == "id xabc123 and abc1234"


def test_a_long_secret_is_masked_wherever_it_appears() -> None:
    secret = "k3y-0123456789"
    assert redact(f"GET /x?q%3D{secret}&z", secrets=[secret]) == "GET /x?q%3D***&z"


def test_secret_characters_are_literal_not_a_pattern() -> None:
    assert redact("a.b and axb", secrets=["a.b"]) == "*** and axb"


async def test_a_credential_too_short_to_redact_is_warned_about_once_built(caplog: pytest.LogCaptureFixture) -> None:
    short = "k" * (MIN_REDACTABLE_SECRET - 1)
    async with httpx.AsyncClient() as client:
        with caplog.at_level(logging.WARNING, logger="providers.http"):
            ProviderHTTP("agentmail", client, "http://x.test", {"Authorization": f"Bearer {short}"})
            ProviderHTTP("openrouter", client, "http://x.test", {"Authorization": "Bearer " + "k" * 40})
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "agentmail" in warnings[0] and "too short to redact" in warnings[0]
    assert short not in warnings[0]
