"""Readers of files written by other projects: StableToolBench queries and the StepTool reference's trajectories,
annotations and training files."""
