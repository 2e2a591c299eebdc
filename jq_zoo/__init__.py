"""Small real models and offline datasets used by the ``jq`` command, the examples and the benchmarks."""
