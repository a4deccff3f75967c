"""Evaluation: the pass-rate judges (`rule` in results.py, on ToolWorld's fact judge; `openai` in llm_pass_rate.py),
StableToolBench's pass-rate arithmetic (passrate.py), and per-task results with their summary and win rate
(docs/architecture.md, "Evaluation")."""
