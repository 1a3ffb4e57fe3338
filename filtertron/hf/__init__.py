"""filtertron <-> Hugging Face: export checkpoints as transformers models, import GPT-2s, and
write lm-evaluation-harness tasks over prepared splits.

    filtertron export CHECKPOINT --to hf OUTDIR        (:mod:`filtertron.hf.export`)
    filtertron export DATASET --to lm-eval TASKDIR     (:mod:`filtertron.hf.lm_eval_task`)
    filtertron import HF_DIR --out RUN_DIR             (:mod:`filtertron.hf.importer`)

Needs the ``hf`` extra (transformers, safetensors, lm-eval). Nothing here reaches the network;
the files written are loaded from local paths.
"""
