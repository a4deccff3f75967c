"""The round's precompute under FSDP2 on the CPU (gloo), for tests/test_trainer_scale.py. Each process shards
the tiny policy as accelerate's FSDP2 plugin does (`fully_shard` on every decoder layer, then on the whole
PolicyWithValue, value head included) and runs `precompute` with its rank and world; rank 0 writes what came
out. accelerate runs FSDP on GPUs only, so the Trainer reaches FSDP only there; the precompute it calls after
`accelerator.prepare` is this one. `run` needs a process group (tests/support/multiprocess.py runs it under
`accelerate launch`, after the DDP checks); alone:

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m tests.support.fsdp_precompute OUT.json

The trajectories are the toy environment's `mixed_lengths` (7: rank 0 gets 4, rank 1 gets 3), in batches of 3,
so rank 0 runs two forward passes and rank 1 one of its own: without a stand-in pass on rank 1 the ranks'
collectives would no longer pair."""
from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

BATCH = 3


def config(output_dir: str):
    from trainer.config import StepPPOConfig

    return StepPPOConfig(output_dir=output_dir, report_to=[], use_cpu=True, variant="steptool", baseline="crossfit",
                         per_device_eval_batch_size=BATCH, seed=0, disable_tqdm=True)


def setup():
    """(tokenizer, tiny model, trajectories): the same in every process."""
    from pipeline.models import SMOLLM2, load_tokenizer
    from tests.support.tiny_model import make_tiny_model
    from tests.support.toy_env import mixed_lengths

    tok = load_tokenizer(SMOLLM2)
    model = make_tiny_model(tok, seed=4)
    return tok, model, mixed_lengths(model, tok)


def main(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    run(out)
    dist.destroy_process_group()


def run(out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from trainer import ppo_round
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import precompute

    gathered = []  # what each rank sent to every other: per-unit numbers only, never a [units, H] feature tensor
    plain_gather = ppo_round._gather

    def recording_gather(part: dict, world: int):
        gathered.extend(type(x).__name__ for v in part.values() for x in v)
        return plain_gather(part, world)

    ppo_round._gather = recording_gather

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    _, model, examples = setup()
    wrapped = PolicyWithValue(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(wrapped)
    assert type(wrapped.v_head.weight).__name__ == "DTensor"
    items, stats = precompute(wrapped, examples, config(str(out.parent / "fsdp-ckpt")), rank, world)
    weight, bias = wrapped.v_head.weight.full_tensor(), wrapped.v_head.bias.full_tensor()
    if rank == 0:
        out.write_text(json.dumps({
            "world": world, "shards": stats["shards"], "ref_logprobs": [it.ref_logprobs for it in items],
            "old_values": [it.old_values for it in items], "baseline": [it.baseline for it in items],
            "head": weight.view(-1).tolist() + bias.tolist(),
            "local_head_rows": [int(wrapped.v_head.weight.to_local().shape[0])], "gathered": sorted(set(gathered))}))
    ppo_round._gather = plain_gather
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
