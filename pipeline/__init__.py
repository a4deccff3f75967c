"""steptool: step-grained reinforcement learning for tool-using LLM agents (StepTool, arXiv 2410.07745)."""
import os as _os

# No network at run time: weights and data sets come from disk only. Set before transformers loads.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    _os.environ.setdefault(_var, "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
