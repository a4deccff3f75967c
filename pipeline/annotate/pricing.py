"""What judge calls cost: tokens estimated from characters, priced per million tokens (annotate.price_*)."""
from __future__ import annotations

import json

CHARS_PER_TOKEN = 4  # the judge's tokenizer is unknown: budgets are in estimated tokens
BATCH_PRICE_FACTOR = 0.5  # OpenAI's Batch API bills half the online price (platform.openai.com/docs/guides/batch)


def estimated_tokens(request: dict) -> int:
    """Prompt tokens of a chat request, estimated from its characters (messages and tool schemas)."""
    return len(json.dumps([request.get("messages"), request.get("tools")], ensure_ascii=False)) // CHARS_PER_TOKEN


def cost_usd(prompt_tokens: float, completion_tokens: float, cfg) -> float:
    """USD at `cfg`'s prices (an AnnotateConfig)."""
    return (prompt_tokens * cfg.price_input_usd_per_mtok + completion_tokens * cfg.price_output_usd_per_mtok) / 1e6


def usage_tokens(body) -> tuple[int, int]:
    """(prompt, completion) tokens of an answer's `usage`, each counted only when a non-negative integer (an
    odd usage costs nothing rather than a negative or absurd amount; the answer itself stays valid)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    usage = usage if isinstance(usage, dict) else {}

    def count(v) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**9 else 0

    return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))
