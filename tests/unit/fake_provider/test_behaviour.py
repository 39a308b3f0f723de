"""The wire-neutral rules: made-up tool arguments, what a plan holds, script fields."""

from __future__ import annotations

from typing import Any

import pytest

from services.fake_provider.behaviour import (
    FIRST_TOOL,
    Ask,
    BadRequest,
    Finish,
    Plan,
    Tool,
    decide,
    make_arguments,
)
from services.fake_provider.pieces import split_reply
from services.fake_provider.script import Script, ScriptError, Step, parse_steps

BASE = Step(chunks=4, reply="one two three four five")
TOOLS = (
    Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
    Tool("no_args", None),
)


def plan(script: Script | None = None, **ask: Any) -> Plan:
    fields: dict[str, Any] = {
        "wire": "openai",
        "model": "m",
        "stream": False,
        "max_tokens": None,
        "prompt_tokens": 7,
        **ask,
    }
    return decide(Ask(**fields), base=BASE, script=script or Script(), split=split_reply)


class TestArguments:
    def test_required_properties_by_type(self) -> None:
        schema = {
            "type": "object",
            "properties": {
                "s": {"type": "string"},
                "i": {"type": "integer"},
                "n": {"type": "number"},
                "b": {"type": "boolean"},
                "a": {"type": "array", "items": {"type": "string"}},
                "o": {"type": "object"},
                "nullable": {"type": ["null", "integer"]},
                "gemini": {"type": "INTEGER"},
                "untyped": {},
                "optional": {"type": "integer"},
            },
            "required": ["b", "s", "i", "n", "a", "o", "nullable", "gemini", "untyped"],
        }
        args = make_arguments(schema)
        assert args == {
            "b": True,
            "s": "Paris",
            "i": 1,
            "n": 1.5,
            "a": [],
            "o": {},
            "nullable": 1,
            "gemini": 1,
            "untyped": "Paris",
        }
        assert list(args) == schema["required"]  # the schema's order

    @pytest.mark.parametrize(
        ("schema", "expected"),
        [
            ({"type": "object", "properties": {"x": {"type": "number"}, "y": {}}}, {"x": 1.5}),
            ({"type": "object", "properties": {}}, {}),
            ({"type": "object"}, {}),
            (None, {}),
            ("nonsense", {}),
        ],
    )
    def test_first_property_or_nothing(self, schema: object, expected: dict[str, Any]) -> None:
        assert make_arguments(schema) == expected

    def test_fresh_containers(self) -> None:
        schema = {"properties": {"a": {"type": "array"}}, "required": ["a"]}
        make_arguments(schema)["a"].append(1)
        assert make_arguments(schema) == {"a": []}


class TestDecide:
    def test_text(self) -> None:
        result = plan(max_tokens=3)
        assert result.text == ("one two ", "three ", "four ")
        assert (result.finish, result.completion_tokens) == (Finish.LENGTH, 3)
        assert plan().finish is Finish.STOP

    def test_images_prefix_the_reply(self) -> None:
        assert "".join(plan(images=3).text) == "I see 3 image(s). one two three four five"

    def test_tool_results_win_over_tools_and_images(self) -> None:
        result = plan(
            tool_results=("a", "b"),
            tools=TOOLS,
            forced_tool=FIRST_TOOL,
            images=1,
            user_text="[[fake:tool=get_weather]]",
        )
        assert "".join(result.text) == "Tool result received: a; b" and not result.tool_calls

    def test_tool_calls(self) -> None:
        result = plan(tools=TOOLS, user_text="[[fake:tools=no_args+get_weather]]", max_tokens=1)
        assert [(c.name, c.arguments) for c in result.tool_calls] == [
            ("no_args", {}),
            ("get_weather", {"city": "Paris"}),
        ]
        assert result.tool_calls[0].pieces == ("{", "}")
        assert "".join(result.tool_calls[1].pieces) == '{"city":"Paris"}'
        assert result.finish is Finish.TOOL_CALLS  # max tokens do not cut tool calls
        assert result.completion_tokens == 2 + 4

    def test_directive_wins_over_forced_choice(self) -> None:
        result = plan(tools=TOOLS, forced_tool="get_weather", user_text="[[fake:tool=no_args]]")
        assert [c.name for c in result.tool_calls] == ["no_args"]
        assert [c.name for c in plan(tools=TOOLS, forced_tool=FIRST_TOOL).tool_calls] == [
            "get_weather"
        ]

    def test_tools_off(self) -> None:
        result = plan(tools=TOOLS, tools_off=True, user_text="[[fake:tool=absent]]")
        assert result.text and not result.tool_calls

    def test_unknown_tool(self) -> None:
        with pytest.raises(BadRequest, match="'absent' is not among"):
            plan(tools=TOOLS, user_text="[[fake:tool=absent]]")
        with pytest.raises(BadRequest):
            plan(tools=TOOLS, forced_tool="absent")

    def test_failure_steps_skip_the_answer(self) -> None:
        result = plan(user_text="[[fake:status=503,tool=absent]]")
        assert result.failed and not result.text and result.step.status == 503
        assert plan(user_text="[[fake:hang]]").step.hang

    def test_queued_step_then_directive(self) -> None:
        script = Script()
        script.push(parse_steps([{"wire": "gemini", "status": 500}, {"chunks": 2, "eos": True}]))
        result = plan(script, user_text="[[fake:reply=a b c]]")
        assert result.text == ("a b ", "c") and result.step.eos
        assert len(script) == 1


class TestScriptFields:
    def test_new_directives(self) -> None:
        step = Step.from_directives("[[fake:tools=a+b, eos]] [[fake:tool=c]]")
        assert step == Step(tools="a+b", eos=True, tool="c")

    @pytest.mark.parametrize("text", ["[[fake:wire=openai]]", "[[fake:model=m]]"])
    def test_queue_only_fields(self, text: str) -> None:
        with pytest.raises(ScriptError, match="only valid in queued"):
            Step.from_directives(text)

    def test_wire_must_be_known(self) -> None:
        with pytest.raises(ScriptError):
            parse_steps([{"wire": "cohere"}])

    def test_take_by_model_and_wire(self) -> None:
        script = Script()
        script.push(
            parse_steps(
                [{"wire": "anthropic", "model": "a", "status": 1}, {"wire": "gemini", "status": 2}]
            )
        )
        assert script.take("a", "gemini") == Step(wire="gemini", status=2)
        assert script.take("b", "anthropic") is None
        assert script.take("a", "anthropic") == Step(wire="anthropic", model="a", status=1)
