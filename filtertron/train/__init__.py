"""Training: DeepSpeed engine set-up, the loop, checkpoints, logging and launch."""
