"""Latent diffusion parts the workflow trains where a paper run downloads them: a Shapes VAE
(``AutoencoderKL``) and a latent SDXL (``StableDiffusionXLPipeline`` folder), the distillation teacher of
pixel-space SDXL."""
