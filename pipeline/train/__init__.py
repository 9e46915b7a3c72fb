"""Training of the decoupling GAN: judges, progressive stages, checkpoints, target codes."""
