"""The loops and what they share: one training epoch and checkpoints, evaluation, embedding and exact search, the
entry points' error handling."""
