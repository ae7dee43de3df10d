"""EDF nights to epoch images, their measures and chain-of-thought, the training records and eval questions."""
