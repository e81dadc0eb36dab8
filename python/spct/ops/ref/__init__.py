"""Pure Python/PyTorch references: the test oracles, the fallbacks and the benchmark baselines."""
