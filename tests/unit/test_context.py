"""What the language model sees: conversation items -> chat messages, truncation, tools."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.core.context import (
    chat_tool_choice,
    chat_tools,
    estimate_tokens,
    items_to_messages,
    message_tokens,
    truncate,
)


def msg(role: str, *parts: dict[str, Any], item_id: str = "item_1") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": role, "content": list(parts)}


def text(t: str) -> dict[str, Any]:
    return {"type": "input_text", "text": t}


def call(call_id: str, name: str = "f", arguments: str = "{}") -> dict[str, Any]:
    return {"id": "item_" + call_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def result(call_id: str, output: str = "ok") -> dict[str, Any]:
    return {"id": "item_r" + call_id, "type": "function_call_output", "call_id": call_id, "output": output}


# ---- items_to_messages -----------------------------------------------------------------------


def test_system_user_and_assistant_messages() -> None:
    items = [
        msg("system", text("Be brief."), text("Be kind.")),
        msg("user", text("hello"), text("there")),
        msg("assistant", {"type": "output_text", "text": "Hi!"}),
    ]
    assert items_to_messages(items) == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "hello\nthere"},
        {"role": "assistant", "content": "Hi!"},
    ]


def test_audio_reaches_the_model_as_its_transcript() -> None:
    items = [
        msg("user", {"type": "input_audio", "transcript": "turn on the lights"}),
        msg("assistant", {"type": "output_audio", "transcript": "Done."}),
        msg("user", {"type": "input_audio", "transcript": None}),  # not transcribed yet: left out
        msg("user", {"type": "input_audio"}),
        msg("assistant", {"type": "output_audio", "transcript": ""}),  # nothing heard: left out
    ]
    assert items_to_messages(items) == [
        {"role": "user", "content": "turn on the lights"},
        {"role": "assistant", "content": "Done."},
    ]


def test_images_make_a_multipart_user_message() -> None:
    items = [msg("user", text("what is this?"),
                 {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                 {"type": "input_image", "image_url": "data:image/jpeg;base64,BBBB", "detail": "low"})]
    assert items_to_messages(items) == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,BBBB", "detail": "low"}},
    ]}]


def test_consecutive_function_calls_become_one_assistant_message() -> None:
    items = [msg("user", text("weather in Paris and Rome?")), call("call_1", "weather", '{"city":"Paris"}'),
             call("call_2", "weather", ""), result("call_1", "21"), result("call_2", "25")]
    assert items_to_messages(items) == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        {"role": "tool", "tool_call_id": "call_2", "content": "25"},
    ]


def test_calls_after_text_or_results_start_a_new_assistant_message() -> None:
    items = [msg("assistant", {"type": "output_text", "text": "Let me look."}), call("call_1"), result("call_1"),
             call("call_2"), result("call_2")]
    out = items_to_messages(items)
    assert [m["role"] for m in out] == ["assistant", "assistant", "tool", "assistant", "tool"]
    assert out[0] == {"role": "assistant", "content": "Let me look."}
    assert [len(m.get("tool_calls") or []) for m in out] == [0, 1, 0, 1, 0]


def test_call_id_falls_back_to_the_item_id() -> None:
    item = {"id": "item_c", "type": "function_call", "name": "f", "arguments": "{}"}
    assert items_to_messages([item])[0]["tool_calls"][0]["id"] == "item_c"


def test_orphan_tool_results_are_dropped() -> None:
    items = [result("call_gone"), msg("user", text("hi")), call("call_1"), result("call_1"), result("call_other")]
    out = items_to_messages(items)
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
    assert out[-1]["tool_call_id"] == "call_1"


def test_a_result_before_its_call_is_an_orphan() -> None:
    assert [m["role"] for m in items_to_messages([result("call_1"), call("call_1")])] == ["assistant"]


def test_unknown_items_are_ignored() -> None:
    items = [{"id": "x", "type": "mcp_approval_response", "approval_request_id": "a", "approve": True},
             msg("user", text("hi"))]
    assert items_to_messages(items) == [{"role": "user", "content": "hi"}]


# ---- token estimates -------------------------------------------------------------------------


def test_token_estimates() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert message_tokens({"role": "user", "content": "abcd" * 9}) == 9 + 4
    assert message_tokens({"role": "assistant", "content": None}) == 4
    image = {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}}]}
    assert message_tokens(image) == 1 + 85 + 4
    calls = {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c", "type": "function", "function": {"name": "ab", "arguments": "cd"}}]}
    assert message_tokens(calls) == 1 + 4


# ---- truncate --------------------------------------------------------------------------------


def user(i: int) -> dict[str, Any]:
    """A user message of exactly 13 tokens (9 of text + 4 overhead)."""
    return {"role": "user", "content": f"{i:02d}" + "x" * 34}


FIVE = [user(i) for i in range(5)]  # 65 tokens


def test_messages_that_fit_are_kept_whatever_the_policy() -> None:
    for policy in ("auto", "disabled", {"type": "retention_ratio", "retention_ratio": 0.5}):
        assert truncate(FIVE, budget=65, policy=policy) == (FIVE, 0)


def test_auto_drops_the_oldest_until_it_fits() -> None:
    kept, dropped = truncate(FIVE, budget=40, policy="auto")
    assert dropped == 2 and kept == FIVE[2:]
    kept, dropped = truncate(FIVE, budget=64, policy="auto")
    assert dropped == 1 and kept == FIVE[1:]


def test_retention_ratio_drops_down_to_the_ratio() -> None:
    kept, dropped = truncate(FIVE, budget=40, policy={"type": "retention_ratio", "retention_ratio": 0.5})
    assert kept == FIVE[4:] and dropped == 4  # down to 20 tokens, not just 40
    kept, dropped = truncate(FIVE, budget=60, policy={"type": "retention_ratio", "retention_ratio": 0.8})
    assert kept == FIVE[2:] and dropped == 2  # 48 -> keep 39


def test_post_instructions_limit_lowers_the_budget() -> None:
    policy = {"type": "retention_ratio", "retention_ratio": 1.0, "token_limits": {"post_instructions": 30}}
    kept, dropped = truncate(FIVE, budget=1000, policy=policy)
    assert kept == FIVE[3:] and dropped == 3
    policy = {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": {"post_instructions": 30}}
    kept, _ = truncate(FIVE, budget=1000, policy=policy)
    assert kept == FIVE[4:]  # 15 tokens of room
    policy = {"type": "retention_ratio", "retention_ratio": 1.0, "token_limits": {"post_instructions": 100}}
    assert truncate(FIVE, budget=1000, policy=policy) == (FIVE, 0)


def test_disabled_returns_none_when_it_does_not_fit() -> None:
    assert truncate(FIVE, budget=64, policy="disabled") is None


def test_truncation_never_leaves_an_orphan_tool_result_first() -> None:
    messages = [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x" * 40},
        user(1),
    ]
    kept, dropped = truncate(messages, budget=30, policy="auto")
    assert dropped == 1 and kept == [user(1)]


def test_a_tool_result_that_alone_overflows_keeps_its_call() -> None:
    call_msg = {"role": "assistant", "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    tool_msg = {"role": "tool", "tool_call_id": "c1", "content": "x" * 400}  # 104 tokens
    kept, _ = truncate([user(0), call_msg, tool_msg], budget=50, policy="auto")
    assert kept == [call_msg, tool_msg]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 200), max_size=12), budget=st.integers(0, 600),
       ratio=st.floats(0, 1), use_ratio=st.booleans())
def test_truncate_keeps_a_suffix_that_fits(sizes: list[int], budget: int, ratio: float, use_ratio: bool) -> None:
    messages = [{"role": "user", "content": f"{i}:" + "y" * n} for i, n in enumerate(sizes)]
    policy: Any = {"type": "retention_ratio", "retention_ratio": ratio} if use_ratio else "auto"
    kept, dropped = truncate(messages, budget=budget, policy=policy)
    assert kept == messages[dropped:]
    total = sum(message_tokens(m) for m in messages)
    if total <= budget:
        assert dropped == 0
    else:
        target = int(budget * ratio) if use_ratio else budget
        # it fits, or only the newest message is left (it is never dropped)
        assert sum(message_tokens(m) for m in kept) <= target or dropped == len(messages) - 1
        # no more was dropped than needed
        assert dropped == 0 or sum(message_tokens(m) for m in messages[dropped - 1:]) > target


# ---- tools -----------------------------------------------------------------------------------


def test_chat_tools_keeps_function_tools_only() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [
        {"type": "function", "name": "weather", "description": "Get the weather.", "parameters": params},
        {"type": "function", "name": "noop"},
        {"type": "function", "name": "blank", "description": ""},
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.example/"},
    ]
    assert chat_tools(tools) == [
        {"type": "function", "function": {"name": "weather", "description": "Get the weather.", "parameters": params}},
        {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "blank", "parameters": {"type": "object", "properties": {}}}},
    ]
    assert chat_tools([]) == []


@pytest.mark.parametrize("choice, expected", [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ({"type": "mcp", "server_label": "deepwiki"}, "auto"),
])
def test_chat_tool_choice(choice: Any, expected: Any) -> None:
    tools = chat_tools([{"type": "function", "name": "weather"}])
    assert chat_tool_choice(choice, tools) == expected
    assert chat_tool_choice(choice, []) is None  # no tools, no choice
