"""RLlib glue."""
