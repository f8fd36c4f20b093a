"""Diffusion / flow-matching math (losses, time distributions, samplers): pure functions, no weights."""
