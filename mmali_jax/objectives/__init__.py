"""Objectives: the discriminator and generator losses of one iteration, per discriminator kind."""
from mmali_jax.objectives import factorized
from mmali_jax.objectives import monolithic

OBJECTIVES = {'factorized': factorized, 'monolithic': monolithic}
