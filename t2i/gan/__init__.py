"""GAN objectives (pure functions over networks and tensors; no weights of their own)."""
