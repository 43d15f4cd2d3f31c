"""Orchestration, in layers that only import downward (docs/ARCHITECTURE.md): spec (configs, recipes, command
options), engine (the plain loop), tracking (MLflow, the model loader), evaluation, inference, training (Ray Train
and Tune), orchestration and demos, ops (services, benchmarks, job submission) and cli (the `ganpipe` command)."""
