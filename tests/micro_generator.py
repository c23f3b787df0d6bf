"""A 32 px StyleGAN v1 with 16-32 channels, for tests of machinery that compiles many programs (sharding,
several processes, the command line), where what the generator computes does not matter, only that it is
one. Imported by conftest and by the scripts those tests run in subprocesses."""

from pulse_jax.generators.stylegan1 import StyleGANConfig

MICRO = StyleGANConfig(resolution=32, fmap_base=256, fmap_max=32)
