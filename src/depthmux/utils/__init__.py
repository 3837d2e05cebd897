"""Small shared utilities: atomic checkpoints, seeding, device choice."""
