"""Test fixtures shipped with the package: tiny random-weight pipelines of the real architectures."""
