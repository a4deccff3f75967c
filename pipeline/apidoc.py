"""ToolBench api docs -> the function specs an agent sees, exactly as StableToolBench builds them."""
from __future__ import annotations

import json
from typing import Any

from pipeline.toolworld.naming import function_name, standardize

_TYPES = {"NUMBER": "integer", "STRING": "string", "BOOLEAN": "boolean"}

FINISH_FUNCTION: dict[str, Any] = {
    "name": "Finish",
    "description": "If you believe that you have obtained a result that can answer the task, please call this "
                   "function to provide the final answer. Alternatively, if you recognize that you are unable to "
                   "proceed with the task in the current state, call this function to restart. Remember: you must "
                   "ALWAYS call this function at the end of your attempt, and the only part that will be shown to "
                   "the user is the final answer, so it should contain sufficient information.",
    "parameters": {
        "type": "object",
        "properties": {
            "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
            "final_answer": {"type": "string",
                             "description": 'The final answer you want to give the user. You should have this field '
                                            'if "return_type"=="give_answer"'},
        },
        "required": ["return_type"],
    },
}


def function_spec(doc: dict) -> dict[str, Any]:
    """OpenAI-style function spec of one api doc (name, description, parameters)."""
    tool = standardize(doc["tool_name"])
    desc = (doc.get("api_description") or "").strip()
    spec: dict[str, Any] = {
        "name": function_name(doc["tool_name"], doc["api_name"]),
        "description": f'This is the subfunction for tool "{tool}", you can use this tool.'
                       + (f'The description of this function is: "{desc}"' if desc else ""),
        "parameters": {"type": "object", "properties": {}, "required": [], "optional": []},
    }
    params = spec["parameters"]
    for group in ("required_parameters", "optional_parameters"):
        for p in doc.get(group) or []:
            name = p["name"]
            prop = {"type": _TYPES.get(str(p.get("type", "")).upper(), "string"),
                    "description": (p.get("description") or "").strip()}
            default = p.get("default")
            if default not in (None, ""):
                prop["example_value"] = default
            params["properties"][name] = prop
            params["required" if group == "required_parameters" else "optional"].append(name)
    return spec


def function_specs(api_list: list[dict]) -> list[dict[str, Any]]:
    """The agent's function list for a task: every api doc, then Finish."""
    return [function_spec(d) for d in api_list] + [FINISH_FUNCTION]


def render_observation(envelope: dict | str, max_length: int = 1024) -> str:
    """What the agent reads: the envelope as JSON text, cut to `max_length` characters plus '...'."""
    text = envelope if isinstance(envelope, str) else json.dumps(envelope, ensure_ascii=False)
    return text[:max_length] + "..." if len(text) > max_length else text
