"""Discriminators: the factorized set (D0_m, D1_m, joint critic T) and the monolithic baseline.

All layers are spectrally normalised; `update_stats=True` runs one power iteration per call, as
PyTorch's spectral_norm does in train mode (docs/algorithm.md §5.4).
"""
import flax.linen as nn
import jax.numpy as jnp

from mmali_jax.models import layers


class JointCritic(nn.Module):
  """T(x_1..x_M) ~ log q(x_1..x_M) / prod_m q(x_m).

  'dot': <W_1 f_1(x_1), W_2 f_2(x_2)> (two modalities; MNIST-SVHN's XXDiscriminatorDot).
  'concat': concat f_m(x_m) -> W -> W -> 1, W = `width` (MultiMNIST's MultiXDiscriminator: 1024;
  CUB's XXDiscriminatorFTFT: 512).
  """
  modalities: tuple
  kind: str
  width: int = 1024

  @nn.compact
  def __call__(self, xs, update_stats):
    feats = [m.family.x_features(name=f'x_features_{m.name}')(x, update_stats)
             for m, x in zip(self.modalities, xs)]
    if self.kind == 'dot':
      if len(feats) != 2:
        raise ValueError(f"joint_critic='dot' needs exactly 2 modalities, got {len(feats)}; "
                         "use joint_critic='concat'.")
      h1, h2 = (layers.sn_dense(256, f, update_stats) for f in feats)
      return jnp.sum(h1 * h2, axis=-1)
    if self.kind == 'concat':
      h = jnp.concatenate(feats, axis=-1)
      h = layers.leaky_relu(layers.sn_dense(self.width, h, update_stats))
      h = layers.leaky_relu(layers.sn_dense(self.width, h, update_stats))
      return layers.sn_dense(1, h, update_stats)[:, 0]
    raise ValueError(f"Unknown joint_critic {self.kind!r}; choose 'dot' or 'concat'.")


class FactorizedDiscriminators(nn.Module):
  """Per modality m: D0_m(x, z) in R^{M+1} and D1_m(x, z) in R; plus the joint critic T."""
  modalities: tuple
  joint_critic_kind: str  # 'dot' or 'concat' (config.joint_critic)
  joint_critic_width: int = 1024  # hidden width of the 'concat' critic (config.joint_critic_width)

  def setup(self):
    num = len(self.modalities)
    self.d0 = [m.family.xz_discriminator(num + 1, name=f'd0_{m.name}') for m in self.modalities]
    self.d1 = [m.family.xz_discriminator(1, name=f'd1_{m.name}') for m in self.modalities]
    self.t = JointCritic(self.modalities, self.joint_critic_kind,
                         self.joint_critic_width, name='joint_critic')

  def unimodal(self, m, x, z, update_stats):
    """D0_m logits: class 0 = q(x_m, z), 1 = p(x_m, z), 2.. = cross-content classes."""
    return self.d0[m](x, z, update_stats)

  def content(self, m, x, z, update_stats):
    """D1_m logit ~ log q(x_m, s_m, c) / q(x_m, s_m) p(c)."""
    return self.d1[m](x, z, update_stats)[:, 0]

  def joint_critic(self, xs, update_stats):
    """T(x_1..x_M) ~ log q(x_1..x_M) / prod_m q(x_m)."""
    return self.t(xs, update_stats)

  def __call__(self, xs, zs, update_stats=False):
    outs = [(self.unimodal(m, x, z, update_stats), self.content(m, x, z, update_stats))
            for m, (x, z) in enumerate(zip(xs, zs))]
    return outs, self.joint_critic(xs, update_stats)


class MonolithicDiscriminator(nn.Module):
  """The non-factorized baseline D(x_1..x_M, z) in R^{M+1}, z = [s_1..s_M, c].

  Table 1 of the paper calls it "Joint"."""
  modalities: tuple

  @nn.compact
  def __call__(self, xs, z, update_stats):
    feats = [m.family.x_features(name=f'x_features_{m.name}')(x, update_stats)
             for m, x in zip(self.modalities, xs)]
    hz = layers.leaky_relu(layers.sn_dense(400, z, update_stats))
    hz = layers.leaky_relu(layers.sn_dense(256, hz, update_stats))
    h = jnp.concatenate(feats + [hz], axis=-1)
    h = layers.leaky_relu(layers.sn_dense(1024, h, update_stats))
    h = layers.leaky_relu(layers.sn_dense(1024, h, update_stats))
    return layers.sn_dense(len(self.modalities) + 1, h, update_stats)
