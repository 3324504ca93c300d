"""The strict JSON rules of request bodies (desired_state/http/json_decode.py), inline and in the
worker process that decodes bodies too expensive for the event loop."""

from __future__ import annotations

import io
import marshal

import pytest

from desired_state.http import json_decode
from desired_state.http.body import JsonWorker
from desired_state.http.errors import ApiError


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"a": {"b": 1, "b": 2}}', "body: the key 'b' appears twice in one object"),
        (b'{"' + b"k" * 100 + b'": 1, "' + b"k" * 100 + b'": 2}', "body: the key '" + "k" * 37 + "...'"),
        (b'{"env": {"A\\u0000": "x"}}', "env: must not contain NUL characters"),
        (b'{"a": ["ok", "\\ud800"]}', "a.1: is not valid Unicode text"),
        (b"[Infinity]", "body: is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body: is not valid JSON"),
        (b"[1, 2, 3, 4]", "body: holds more than 4 JSON values"),
        (b'{"a": [1, 2, 3, 4, 5]}', "a: has 5 items; a body may hold at most 4 JSON values"),
        (b"\xfe\xff\x00{\x00}", "body: is UTF-16 or UTF-32; send UTF-8"),
    ],
)
def test_what_json_loads_would_accept_is_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(json_decode.DecodeError) as refused:
        json_decode.decode(raw, max_values=4 if b"[1" in raw else 1000)
    assert refused.value.problems[0].startswith(problem)


def test_good_json_decodes_and_the_estimate_bounds_the_work() -> None:
    raw = b'{"instanceId": "a", "tools": ["openrouter", "agentmail"], "env": {"A": "x,y[{"}}'
    # Keys count as values: 1 object + 3 keys + 1 + 1 list + 2 + 1 object + 1 key + 1 = 11.
    assert json_decode.decode(raw, max_values=11) == {
        "instanceId": "a",
        "tools": ["openrouter", "agentmail"],
        "env": {"A": "x,y[{"},
    }
    assert 2 * json_decode.estimated_values(raw) >= 11


def test_the_worker_protocol_answers_each_framed_body() -> None:
    requests = io.BytesIO()
    for raw in (b'{"a": 1}', b'{"a": 1, "a": 2}'):
        requests.write(json_decode.HEADER.pack(len(raw), 100) + raw)
    requests.seek(0)
    answers = io.BytesIO()
    json_decode.serve(requests, answers)
    data = answers.getvalue()
    results = []
    while data:
        (size,) = json_decode.ANSWER.unpack(data[: json_decode.ANSWER.size])
        results.append(marshal.loads(data[json_decode.ANSWER.size : json_decode.ANSWER.size + size]))
        data = data[json_decode.ANSWER.size + size :]
    assert results == [(0, {"a": 1}), (400, ["body: the key 'a' appears twice in one object"])]


async def test_the_worker_process_decodes_and_survives_being_killed() -> None:
    worker = JsonWorker()
    try:
        assert await worker.decode(b'{"ids": ["a", "b"]}', 10) == {"ids": ["a", "b"]}
        with pytest.raises(ApiError, match="body: has 100 items; a body may hold at most 10 JSON values"):
            await worker.decode(b"[" + b",".join([b"[]"] * 100) + b"]", 10)
        await worker.close()  # as after a cancelled exchange: the next call starts a new process
        assert await worker.decode(b"[1]", 10) == [1]
    finally:
        await worker.close()
