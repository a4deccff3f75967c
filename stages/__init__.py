"""The DVC stages, one thin module each (`python -m stages.<name>`): params in, files out, a one-line summary
(docs/architecture.md, "Layers")."""
