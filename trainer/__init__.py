"""Step-grained PPO on `transformers.Trainer`: the rounds of a training run, phases 1-4 of a round and the update
(docs/architecture.md, "Advantages and the PPO round")."""
