"""Orchestration: configs and recipes, the training loop and its Ray Train adapter, MLflow tracking,
evaluation, figures, benchmarks and the `ganpipe` command."""
