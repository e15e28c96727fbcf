"""Objectives: the discriminator and generator losses of one iteration, per discriminator kind."""
from mmali_jax.objectives import factorized
from mmali_jax.objectives import joint

OBJECTIVES = {'factorized': factorized, 'joint': joint}
