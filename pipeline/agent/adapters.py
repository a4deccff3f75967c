"""A LoRA-trained checkpoint served by a running OpenAI-compatible server (vLLM) as the SFT model plus its adapter
(docs/architecture.md, "Scaling out"), so the PPO rounds and the replay can play each new policy without a
server restart.

vLLM's documented contract (docs/features/lora.md, "Dynamically serving LoRA Adapters"; the server runs with
`--enable-lora`, `--max-lora-rank` at least train.lora_r, and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):

    POST {base_url}/load_lora_adapter   {"lora_name": NAME, "lora_path": PATH}
    200  Success: LoRA adapter 'NAME' added successfully.           (plain text)
    400  {"object": "error", "message": "The lora adapter 'NAME' has already been loaded.", ...}

after which completions ask for `"model": NAME`. The name carries a digest of the adapter's weights, so a name the
server already holds is these very weights (the 400 is then success) and a retrained adapter gets a new name."""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import SteptoolError


def adapter_name(served: str, adapter: Path) -> str:
    """`served`@<12 hex of the adapter's weights and config>."""
    h = hashlib.sha256()
    for f in sorted(Path(adapter).iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return f"{served}@{h.hexdigest()[:12]}"


def load_lora_adapter(base_url: str, served: str, adapter: Path, api_key_env: str, timeout_s: float = 300.0) -> str:
    """Ask the server at `base_url` to load the adapter folder `adapter` (which it must be able to read: the same
    machine or a shared file system) and return the model name to request it by. The key comes from the
    environment variable `api_key_env` and is never written."""
    adapter = Path(adapter).resolve()
    name = adapter_name(served, adapter)
    body = json.dumps({"lora_name": name, "lora_path": str(adapter)}).encode()
    url = base_url.rstrip("/") + "/load_lora_adapter"
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {os.environ.get(api_key_env) or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
        return name
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")[:500]
        if e.code == 400 and "already been loaded" in text:
            return name  # the same weights, loaded by an earlier attempt
        hint = (" (vLLM: start it with --enable-lora, --max-lora-rank >= train.lora_r and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)" if e.code in (404, 405) else "")
        raise SteptoolError(f"{url}: loading the LoRA adapter {adapter} as {name!r} failed with HTTP {e.code}: "
                            f"{text}{hint}") from None
    except (urllib.error.URLError, TimeoutError) as e:
        raise SteptoolError(f"{url}: no answer while loading the LoRA adapter {adapter} ({e}): is the server "
                            "running (agent.base_url)?") from None
