"""Step-grained annotation: the annotators (oracle, heuristic, openai judge) that label SuccCalling, Contribution and
IsSolved per step, their judge client, cache and pricing, and importers of annotations made elsewhere
(docs/architecture.md, "Rewards")."""
