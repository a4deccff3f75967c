"""An OpenAI-compatible /v1/completions server on 127.0.0.1 for tests: a real HTTP server that samples from
real (tiny) HF models with transformers' own `generate` (not this project's sampler, so a test that compares the
openai backend with the hf one compares two implementations) and answers the options this project sends as
vLLM does:

- `prompt` as token ids (or text); `max_tokens`, `temperature`, `top_p`, `seed`;
- `logprobs`: each generated token's log-prob at temperature 1, before any processing (vLLM's default "raw"
  log-probs); `return_tokens_as_token_ids`: tokens as "token_id:N";
- `stop` strings (with `include_stop_str_in_output`), `stop_token_ids`; the end-of-turn token is returned
  among the tokens when it ends the answer;
- `structured_outputs: {"choice": [...]}` (vLLM >= 0.10.2) and `guided_choice` (older): the output is one
  of the choices (each as the tokenizer encodes it, enforced by `generate`'s `prefix_allowed_tokens_fn`), then
  ends (finish_reason "stop");
- `seed`: the sample is a function of the request (torch's generator seeded per request, under the lock);
- the `model` field picks the model: `models` maps names to models, or `load(name)` loads one on first use
  (`vllm serve DIR` serves DIR under the name DIR);
- `POST /v1/load_lora_adapter` as vLLM documents it (docs/features/lora.md, "Dynamically serving LoRA
  Adapters"): `{"lora_name", "lora_path"}`; 200 with the plain-text body "Success: LoRA adapter 'NAME' added
  successfully."; a name already loaded: 400 with vLLM's error object ("The lora adapter 'NAME' has already been
  loaded."); a path without an adapter: 400. The adapter goes on `lora_base` (the served base model's name:
  vLLM applies it to the model it serves), and NAME is then a model to request.

Faults: HTTP codes answered, in order, before real answers. `requests_seen` keeps every request body."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _error(message: str) -> dict:
    """vLLM's ErrorResponse for a bad request."""
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}


class CompletionServer:
    def __init__(self, policy_or_models, tokenizer, faults: list[int] | None = None, delay_s: float = 0.0,
                 load=None, lora_base: str | None = None):
        if hasattr(policy_or_models, "model"):  # an HFPolicy: its model, under any name
            self.models, self.default = {}, policy_or_models.model
        else:
            self.models, self.default = dict(policy_or_models or {}), None
        self.load = load
        self.lora_base = lora_base
        self.adapter_requests: list[dict] = []
        self.tok = tokenizer
        self.faults = list(faults or [])  # HTTP codes answered, in order, before real answers
        self.delay_s = delay_s
        self.requests = 0
        self.keys_seen: list[str] = []
        self.requests_seen: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _model(self, name: str):
        if name in self.models:
            return self.models[name]
        if self.load is not None:
            self.models[name] = self.load(name)
            return self.models[name]
        if self.default is not None:
            return self.default
        raise KeyError(f"model {name!r} is not served")

    def load_adapter(self, req: dict) -> tuple[int, str | dict]:
        import copy

        from peft import PeftModel

        name, path = req.get("lora_name"), req.get("lora_path")
        if not name or not path:
            return 400, _error("lora_name and lora_path are required")
        if name in self.models:
            return 400, _error(f"The lora adapter '{name}' has already been loaded.")
        if not (Path(path) / "adapter_config.json").is_file():
            return 400, _error(f"No adapter found for {path}")
        base = copy.deepcopy(self._model(self.lora_base))
        self.models[name] = PeftModel.from_pretrained(base, path).merge_and_unload().eval()
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def _generate(self, model, ids: list[int], req: dict, choices: list[str] | None) -> tuple[list[int], list[float]]:
        """transformers' generate: the new ids (the end-of-turn token included when it ends the answer) and each
        one's raw log-prob (log_softmax of the unprocessed logits: temperature 1, before top-p and the choice
        mask, vLLM's default)."""
        import torch
        from transformers import GenerationConfig

        tok = self.tok
        temperature = float(req.get("temperature", 1.0))
        max_new = int(req.get("max_tokens") or 16)
        allowed = None
        if choices:
            paths = [tok(c, add_special_tokens=False)["input_ids"] for c in choices]
            max_new = min(max_new, max(len(p) for p in paths) + 1)

            def allowed(batch_id, input_ids):  # a trie over the choices' ids, then only the end of turn
                done = input_ids[len(ids):].tolist()
                nxt = {p[len(done)] for p in paths if len(p) > len(done) and p[:len(done)] == done}
                return sorted(nxt) or [tok.eos_token_id]
        cfg = GenerationConfig(max_new_tokens=max_new, do_sample=temperature > 0,
                               temperature=temperature if temperature > 0 else None,
                               top_p=float(req.get("top_p", 1.0)) if temperature > 0 else None, top_k=None,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                               output_logits=True, return_dict_in_generate=True)
        torch.manual_seed(int(req.get("seed") or 0))
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 generation_config=cfg, prefix_allowed_tokens_fn=allowed)
        new = out.sequences[0, len(ids):].tolist()
        lps = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, new)]
        return new, lps

    def complete(self, req: dict) -> dict:
        tok = self.tok
        prompt = req["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        ids = prompt if isinstance(prompt, list) else tok(prompt, add_special_tokens=False)["input_ids"]
        choices = (req.get("structured_outputs") or {}).get("choice") or req.get("guided_choice")
        with self.lock:  # one forward at a time (and torch's global generator seeded per request)
            out, lps = self._generate(self._model(req["model"]), ids, req, choices)
        eos = tok.eos_token_id
        finish = "stop" if out and out[-1] == eos else "length"
        stops = [s for s in (req.get("stop") or []) if s]
        if choices:  # the choice is complete: the grammar allows nothing more
            for k in range(1, len(out) + 1):
                if tok.decode(out[:k], skip_special_tokens=False) in choices:
                    out, lps, finish = out[:k], lps[:k], "stop"
                    break
        elif stops:
            for k in range(1, len(out) + 1):
                if any(s in tok.decode([t for t in out[:k] if t != eos], skip_special_tokens=False) for s in stops):
                    out, lps, finish = out[:k], lps[:k], "stop"
                    break
        if eos in (req.get("stop_token_ids") or []) and eos in out:
            k = out.index(eos) + 1
            out, lps, finish = out[:k], lps[:k], "stop"
        text = tok.decode([t for t in out if t != eos], skip_special_tokens=True)
        for s in stops:
            if s in text and not choices:
                i = text.index(s)
                text = text[: i + len(s)] if req.get("include_stop_str_in_output") else text[:i]
        tokens = [f"token_id:{t}" for t in out] if req.get("return_tokens_as_token_ids") \
            else [tok.decode([t], skip_special_tokens=False) for t in out]
        choice = {"index": 0, "text": text, "finish_reason": finish}
        if req.get("logprobs") is not None:
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": lps}
        return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": req["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}}

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(obj, str) else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests += 1
                    outer.keys_seen.append(self.headers.get("Authorization", ""))
                    outer.requests_seen.append(req)
                    fault = outer.faults.pop(0) if outer.faults else None
                if fault:
                    self._send(fault, {"error": {"message": f"injected {fault}", "type": "test"}})
                    return
                time.sleep(outer.delay_s)
                if self.path.rstrip("/").endswith("/load_lora_adapter"):
                    with outer.lock:
                        outer.adapter_requests.append(req)
                        self._send(*outer.load_adapter(req))
                    return
                try:
                    self._send(200, outer.complete(req))
                except KeyError as e:
                    self._send(404, {"error": {"message": str(e), "type": "not_found"}})

        return H
