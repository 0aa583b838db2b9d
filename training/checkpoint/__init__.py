"""Training checkpoints: what one holds and how it is read (`contents`), when the training loop writes one
and how it reaches storage (`reporting`), and which one a tool scores or starts from (`lookup`)."""
