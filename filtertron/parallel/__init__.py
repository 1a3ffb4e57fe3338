"""Parallelism applied to a built model: process groups, tensor/pipeline plans, CPU shims."""
