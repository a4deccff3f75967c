"""Prompt formats and the one renderer that both generation and training use.

A trajectory is a chat: system (instructions + functions), user (the query), then alternating
assistant actions and function observations, in the model's own chat template (ChatML for
SmolLM2). Three formats:

- ``toolllama``: ToolBench's AutoGPT ReAct prompt with the function list as a Python literal,
  letter for letter as in the ToolLLaMA/StepTool SFT data (for real-scale runs and imports);
- ``compact``: the same ReAct contract in a few lines with one line per function, so that a
  135M model on a laptop CPU reads ~4x fewer tokens per step;
- ``chat_tools``: the tool-calling convention of Qwen2/Qwen2.5 and Hermes-style templates: the functions
  as JSON schemas inside ``<tools></tools>`` in the system turn, each action an optional thought then
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, results in the template's ``tool`` role.
  The tools block is written into the system text with the wording Qwen2.5's template uses for
  ``tools=``, so any chat template (SmolLM2's ChatML has no tools support) renders it the same way.

Token exactness: a context is a list of *segments*. Text segments (everything the model did not
write) are tokenized one at a time; action segments are the token ids the policy generated. The
generation prompt of step t is exactly the rendering of steps < t plus the assistant header, so
what the trainer sees is what the sampler saw, token for token. (Tokenizing the whole chat as one
string can merge characters across a turn boundary, e.g. the header's newline with a reply that
starts with one; the model never sees those merged tokens at inference, so neither do we.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from pipeline.apidoc import function_specs
from pipeline.toolworld.naming import standardize

PromptFormat = Literal["toolllama", "compact", "chat_tools"]
PROMPT_FORMATS = ("compact", "toolllama", "chat_tools")
FUNCTION_ROLE = "function"  # ToolBench's role for call results
TOOL_ROLE = "tool"  # the chat-template convention (Qwen2.5, Llama-3.1, Hermes)
MAX_TOOL_DESCRIPTION = 512

TOOLLLAMA_SYSTEM = (
    "You are AutoGPT, you can use many tools(functions) to do the following task.\n"
    "First I will give you the task description, and your task start.\n"
    "At each step, you need to give your thought to analyze the status now and what to do next, with a function "
    "call to actually excute your step. Your output should follow this format:\n"
    "Thought:\nAction\nAction Input:\n\n"
    "After the call, you will get the call result, and you are now in a new state.\n"
    "Then you will analyze your status now, then decide what to do next...\n"
    "After many (Thought-call) pairs, you finally perform the task, then you can give your finial answer.\n"
    "Remember: \n"
    "1.the state change is irreversible, you can't go back to one of the former state, if you want to restart the "
    "task, say \"I give up and restart\".\n"
    "2.All the thought is short, at most in 5 sentence.\n"
    "3.You can do more then one trys, so if your plan is to continusly try some conditions, you can do one of the "
    "conditions per try.\n"
    "Let's Begin!\n"
    "Task description: You should use functions to help handle the real time user querys. Remember:\n"
    "1.ALWAYS call \"Finish\" function at the end of the task. And the final answer should contain enough "
    "information to show to the user,If you can't handle the task, or you find that function calls always "
    "fail(the function is not valid now), use function Finish->give_up_and_restart.\n"
    "2.Do not use origin tool names, use only subfunctions' names.\n"
)

COMPACT_SYSTEM = (
    "You solve the user's task by calling functions, one per turn, in exactly this format:\n"
    "Thought: <one or two sentences>\nAction: <function name>\nAction Input: <JSON object of arguments>\n"
    "Each call's result comes back as a function message. Search results give ids that other functions need. "
    "If a call fails, fix the arguments or try again. When you know the answer, call Finish with "
    '{"return_type": "give_answer", "final_answer": "<answer with every value you found>"}; '
    'if the task cannot be done, call Finish with {"return_type": "give_up_and_restart"}.\n'
    "Functions:\n"
)


CHAT_TOOLS_SYSTEM = (
    "You solve the user's task by calling functions, one call per turn: first a short thought, then the call. "
    "Search results give ids that other functions need. If a call fails, fix the arguments or try again. "
    'When you know the answer, call Finish with {"return_type": "give_answer", "final_answer": "<answer with '
    'every value you found>"}; if the task cannot be done, call Finish with {"return_type": "give_up_and_restart"}.'
)
# Qwen2.5's chat template, verbatim, for `tools=`.
CHAT_TOOLS_BLOCK = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _tool_lines(api_list: list[dict], tool_descriptions: dict[str, str] | None) -> str:
    tools = list(dict.fromkeys(d["tool_name"] for d in api_list))
    descs = tool_descriptions or {}
    return "".join(f"{i + 1}.{standardize(t)}: {(descs.get(t) or '')[:MAX_TOOL_DESCRIPTION]}\n"
                   for i, t in enumerate(tools))


def _short_description(spec: dict) -> str:
    """The API's own sentence, without ToolBench's 'This is the subfunction for tool ...' preamble."""
    desc = spec["description"]
    marker = "The description of this function is: "
    if marker in desc:
        return desc.split(marker, 1)[1].strip('"')
    if spec["name"] == "Finish":
        return "give the final answer or give up."
    return desc


def _compact_function(spec: dict) -> str:
    props = spec["parameters"].get("properties", {})
    required = set(spec["parameters"].get("required", []))
    args = ", ".join(f"{name}{'' if name in required else '?'}: {p.get('type', 'string')}" for name, p in props.items())
    return f"- {spec['name']}({args}): {_short_description(spec)}\n"


def _json_tool(spec: dict) -> str:
    fn = {"name": spec["name"], "description": _short_description(spec), "parameters": spec["parameters"]}
    return "\n" + json.dumps({"type": "function", "function": fn}, ensure_ascii=False)


def system_prompt(api_list: list[dict], fmt: PromptFormat = "compact",
                  tool_descriptions: dict[str, str] | None = None) -> str:
    """The system message for a task's api docs."""
    specs = function_specs(api_list)
    if fmt == "toolllama":
        return (TOOLLLAMA_SYSTEM + "You have access of the following tools:\n"
                + _tool_lines(api_list, tool_descriptions) + "\n"
                + "Specifically, you have access to the following APIs: " + str(specs))
    if fmt == "compact":
        return COMPACT_SYSTEM + "".join(_compact_function(s) for s in specs)
    if fmt == "chat_tools":
        return CHAT_TOOLS_SYSTEM + CHAT_TOOLS_BLOCK.format(tools="".join(_json_tool(s) for s in specs))
    raise ValueError(f"unknown prompt format {fmt!r} (one of {', '.join(PROMPT_FORMATS)})")


def observation_role(fmt: PromptFormat) -> str:
    """The chat role of call results: ToolBench's `function` for the ReAct formats, `tool` for chat_tools."""
    return TOOL_ROLE if fmt == "chat_tools" else FUNCTION_ROLE


def name_slot(fmt: PromptFormat) -> tuple[str, str, str]:
    """Where a function name is written in an action: (text right before it, text before the name,
    text right after it). Constrained decoding (`HFPolicy`) restricts what follows the trigger."""
    if fmt == "chat_tools":
        return '<tool_call>\n{"name": "', "", '"'
    return "\nAction:", " ", "\n"


def user_message(query: str) -> str:
    """The user turn as ToolBench writes it."""
    return f"\n{query}\nBegin!\n"


def format_action(thought: str, function: str, arguments: dict | str, fmt: PromptFormat = "compact") -> str:
    """An action as the format writes it (and its parser reads back)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    if fmt == "chat_tools":
        try:
            args_obj = json.loads(args)
        except json.JSONDecodeError:
            args_obj = args  # a broken argument string stays broken (expert mistakes, imports)
        call = json.dumps({"name": function, "arguments": args_obj}, ensure_ascii=False)
        return f"{thought}\n<tool_call>\n{call}\n</tool_call>" if thought else f"<tool_call>\n{call}\n</tool_call>"
    return f"Thought: {thought}\nAction: {function}\nAction Input: {args}"


@dataclass
class Rendered:
    """A trajectory as the model sees it: ids, 1 on action tokens, [start, end) of each action."""

    input_ids: list[int]
    action_mask: list[int]
    step_bounds: list[tuple[int, int]] = field(default_factory=list)


class ChatRenderer:
    """Renders chats into token segments with a tokenizer's chat template (split at the assistant turns)."""

    def __init__(self, tokenizer, fmt: PromptFormat = "compact"):
        self.tok = tokenizer
        self.fmt = fmt
        self.observation_role = observation_role(fmt)
        self.eos = tokenizer.eos_token
        self.eos_id = tokenizer.eos_token_id
        # Learn how the template wraps turns from a probe chat, so any template of the same shape works.
        probe = tokenizer.apply_chat_template(
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
             {"role": "assistant", "content": "\x00A\x00"}, {"role": self.observation_role, "content": "\x00O\x00"},
             {"role": "assistant", "content": "\x00B\x00"}], tokenize=False)
        rest = probe.split("\x00A\x00", 1)[1]
        between, rest = rest.split("\x00O\x00", 1)
        if not between.startswith(self.eos):
            raise ValueError(f"chat template does not close an assistant turn with {self.eos!r}: {probe!r}")
        self.before_observation = between[len(self.eos):]  # e.g. "\n<|im_start|>function\n"
        self.after_observation = rest.split("\x00B\x00", 1)[0]  # e.g. "<|im_end|>\n<|im_start|>assistant\n"

    def prefix(self, system: str, user: str) -> str:
        """Text up to and including the first assistant header."""
        return self.tok.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=False, add_generation_prompt=True)

    def observation_segment(self, observation: str, action_ended: bool = True) -> str:
        """Text between two actions: (eos if the action was cut) + function turn + next assistant header."""
        return ("" if action_ended else self.eos) + self.before_observation + observation + self.after_observation

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_action(self, action_text: str) -> list[int]:
        """Ids of an action written by someone else (an expert, an import): text then the end-of-turn token."""
        return self.encode(action_text) + [self.eos_id]

    def render(self, system: str, user: str, actions: list[list[int]], observations: list[str],
               ended: list[bool] | None = None) -> Rendered:
        """Ids of system+user, then action_0, observation_0, action_1, ... (observations after actions[:-1] or all)."""
        return self.render_from_prefix(self.prefix(system, user), actions, observations, ended)

    def render_from_prefix(self, prefix_text: str, actions: list[list[int]], observations: list[str],
                           ended: list[bool] | None = None) -> Rendered:
        """As `render`, from the prefix text (system + user + first assistant header, e.g. a step-0 prompt_text)."""
        if len(observations) not in (len(actions), len(actions) - 1):
            raise ValueError(f"{len(actions)} actions need {len(actions) - 1} or {len(actions)} observations")
        ended = ended or [True] * len(actions)
        ids = self.encode(prefix_text)
        mask = [0] * len(ids)
        bounds = []
        for i, action in enumerate(actions):
            bounds.append((len(ids), len(ids) + len(action)))
            ids += action
            mask += [1] * len(action)
            if i < len(observations):
                seg = self.encode(self.observation_segment(observations[i], ended[i]))
                ids += seg
                mask += [0] * len(seg)
        return Rendered(ids, mask, bounds)

    def render_messages(self, messages: list[dict], action_ids: list[list[int]] | None = None) -> Rendered:
        """Any chat (extra user turns, as DFSDT's "previous trails failed" prompts, included): assistant turns
        are actions (`action_ids`, else their text + end-of-turn), the rest is text from the chat template."""
        marked = [dict(m, content=f"\x00{i}\x00") if m["role"] == "assistant" else m for i, m in enumerate(messages)]
        text = self.tok.apply_chat_template(marked, tokenize=False)
        pieces = text.split("\x00")
        # pieces: text, index, text, index, ..., text
        actions = iter(action_ids) if action_ids is not None else None
        ids, mask, bounds = [], [], []
        for k, piece in enumerate(pieces):
            if k % 2 == 1:
                content = messages[int(piece)]["content"]
                act = next(actions) if actions is not None else self.encode_action(content)
                bounds.append((len(ids), len(ids) + len(act)))
                ids += act
                mask += [1] * len(act)
                continue
            if k > 0:
                if not piece.startswith(self.eos):
                    raise ValueError("chat template does not end an assistant turn with the end-of-turn token")
                piece = piece[len(self.eos):]
            if k == len(pieces) - 1 and not piece.strip():
                break  # the newline after the last turn: never seen by the sampler
            seg = self.encode(piece)
            ids += seg
            mask += [0] * len(seg)
        return Rendered(ids, mask, bounds)

    def messages(self, system: str, user: str, action_texts: list[str], observations: list[str]) -> list[dict]:
        """The same chat as role/content messages (for chat APIs and for checking against the template)."""
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        for i, a in enumerate(action_texts):
            msgs.append({"role": "assistant", "content": a})
            if i < len(observations):
                msgs.append({"role": self.observation_role, "content": observations[i]})
        return msgs
