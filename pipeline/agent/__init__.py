"""Agents: prompt formats, the action parser, strategies (cot, dfsdt) and policy backends."""
