"""Tests of filtertron.data: sources, tokenizers, prepare, indexed files, samplers."""
