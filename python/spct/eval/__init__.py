"""Evaluation of GRMs on reward-model benchmarks."""
