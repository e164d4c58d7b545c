"""Stage 1, data: the seeded synthetic world and its held-out suite, the tokenizer, and tokens packed into
fixed-length sequences read in a batch order that depends only on (seed, step)."""
