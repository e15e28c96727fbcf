"""Times one training iteration of the authors' PyTorch reference code on random tensors.

  python benchmarks/reference_step.py --reference_dir=/path/to/mmali --experiment=mnist_svhn

Run it with a Python that has PyTorch and the reference's own dependencies (numpy, scipy,
scikit-image); none of them is a dependency of this project. It builds the reference's model as
its training script does (`train_mmali_mnist_svhn.py`, `train_mmali_multimnist.py`,
`train_mmali_multimnist_joint.py`: networks, `utils.init_param_normal`, two Adams, an EMA copy)
and times what one iteration of its training loop does, without data loading: the D step on two
batches, the G step on two batches, and the EMA `lerp`, on the GPU where PyTorch sees one (as the
training scripts run; `--device=cpu` to force the CPU). After the timing, one more iteration
runs under PyTorch's FlopCounterMode, which counts the FLOPs of its matmuls and convolutions
(every tap of every window, padding included). `benchmarks/run.py` calls it in the same run as
this project's benchmarks. Prints one JSON line.
"""
import argparse
import copy
import itertools
import json
import os
import platform
import sys
import time


def _build(args, torch, nn):
  import models  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.mmali.factor2  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.mmali.joint  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.mnist  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.mnist_svhn  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.multimnist  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import models.svhn  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  d, ds = args.latent_dim, args.style_dim
  mnist_shape = (1, 28, 28)
  mnist_encoder = lambda: models.GaussianConditional(
      models.mnist.Encoder(img_shape=mnist_shape, latent_dim=2 * d))
  mnist_decoder = lambda: models.mnist.Decoder(img_shape=mnist_shape, latent_dim=d)
  if args.experiment == 'mnist_svhn':
    keys = ['0mnist', '1svhn']
    shapes = {'0mnist': mnist_shape, '1svhn': (3, 32, 32)}
    model = models.mmali.factor2.FactorModel(
        encoders={'0mnist': mnist_encoder(),
                  '1svhn': models.GaussianConditional(
                      models.svhn.Encoder(channels=3, latent_dim=2 * d))},
        decoders={'0mnist': mnist_decoder(), '1svhn': models.svhn.Decoder(channels=3, latent_dim=d)},
        xz_discriminators={
            '0mnist': nn.ModuleList([
                models.mnist.XZDiscriminator(img_shape=mnist_shape, latent_dim=d,
                                             spectral_norm=True, output_dim=3),
                models.mnist.XZDiscriminator(img_shape=mnist_shape, latent_dim=d,
                                             spectral_norm=True)]),
            '1svhn': nn.ModuleList([
                models.svhn.XZDiscriminator(channels=3, latent_dim=d, spectral_norm=True,
                                            output_dim=3),
                models.svhn.XZDiscriminator(channels=3, latent_dim=d, spectral_norm=True)]),
        },
        joint_discriminator=models.mnist_svhn.XXDiscriminatorDot(img_shape=mnist_shape,
                                                                 channels=3),
        content_dim=d - ds, lambda_unimodal=0.1, lambda_x_rec=0.05, lambda_c_rec=0.05,
        lambda_s_rec=0.05, joint_rec=True)
  else:
    num = args.modalities
    keys = [f'{i}mnist' for i in range(num)]
    shapes = {k: mnist_shape for k in keys}
    if args.discriminator == 'factorized':
      model = models.mmali.factor2.FactorModel(
          encoders={k: mnist_encoder() for k in keys},
          decoders={k: mnist_decoder() for k in keys},
          xz_discriminators={k: nn.ModuleList([
              models.mnist.XZDiscriminator(img_shape=mnist_shape, latent_dim=d,
                                           output_dim=num + 1),
              models.mnist.XZDiscriminator(img_shape=mnist_shape, latent_dim=d)]) for k in keys},
          joint_discriminator=models.multimnist.MultiXDiscriminator(n_modalities=num),
          content_dim=d - ds, lambda_unimodal=0.1)
    else:
      model = models.mmali.joint.JointModel(
          encoders={k: mnist_encoder() for k in keys},
          decoders={k: mnist_decoder() for k in keys},
          discriminator=models.multimnist.MultiXZDiscriminator(
              n_modalities=num, latent_dim=num * ds + d - ds, output_dim=num + 1),
          content_dim=d - ds)
  return model, keys, shapes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference_dir', required=True, help='A checkout of 6b5d/mmali.')
  parser.add_argument('--experiment', choices=('mnist_svhn', 'multimnist'), required=True)
  parser.add_argument('--modalities', type=int, default=2)
  parser.add_argument('--discriminator', choices=('factorized', 'monolithic'),
                      default='factorized')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--latent_dim', type=int, default=20)
  parser.add_argument('--style_dim', type=int, default=10)
  parser.add_argument('--steps', type=int, default=20, help='Fewest timed iterations.')
  parser.add_argument('--seconds', type=float, default=0.0,
                      help='Fewest seconds of timed iterations (whichever ends later).')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--device', default=None,
                      help='cpu or cuda (default: cuda where PyTorch sees a GPU, else cpu).')
  args = parser.parse_args()

  sys.path.insert(0, os.path.abspath(args.reference_dir))
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import torch.nn as nn  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import utils  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
  # As the training scripts: built and initialised on the CPU, copied, then moved to the device,
  # so the optimizers' step counters stay on the CPU. A default device instead
  # (`torch.set_default_device`) would put them on the GPU, where Adam reads each back every step,
  # and would add a Python hop to every torch call, on the CPU too.
  torch.manual_seed(0)
  model, keys, shapes = _build(args, torch, nn)
  utils.init_param_normal(model)
  model_ema = copy.deepcopy(model)
  model.to(device)
  model_ema.to(device)
  optimizer_g = torch.optim.Adam(model.generators.parameters(), lr=2e-4, betas=(0.5, 0.999))
  optimizer_d = torch.optim.Adam(model.discriminators.parameters(), lr=2e-4, betas=(0.5, 0.999))
  b, d, ds = args.batch_size, args.latent_dim, args.style_dim
  # The scripts' loaders draw batches in worker processes, into pinned memory, and the loop moves
  # each to the device; it draws each latent on the CPU and moves it.
  pool = [{k: torch.rand((b,) + shapes[k]) for k in keys} for _ in range(8)]
  if device != 'cpu':
    pool = [{k: x.pin_memory() for k, x in batch.items()} for batch in pool]
  batch = itertools.cycle(pool).__next__
  randn = lambda *shape: torch.randn(*shape).to(device)

  def iteration():
    # As the training scripts' loop: D step on two batches, G step on two batches, EMA.
    losses = {}
    x = batch()
    losses.update(model({k: {'x': x[k].to(device), 'z': randn(b, d)} for k in keys},
                        train_d=True, joint=False))
    x = batch()
    s, c = {k: randn(b, ds) for k in keys}, randn(b, d - ds)
    losses.update(model({k: {'x': x[k].to(device), 'z': torch.cat([s[k], c], dim=1),
                             'extra_x': utils.permute_dim(x[k], dim=0).to(device)} for k in keys},
                        train_d=True, joint=True))
    d_loss = sum(losses.values())
    optimizer_d.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer_d.step()
    losses = {}
    x = batch()
    losses.update(model({k: {'x': x[k].to(device), 'z': randn(b, d)} for k in keys},
                        train_d=False, joint=False))
    x = batch()
    s, c = {k: randn(b, ds) for k in keys}, randn(b, d - ds)
    losses.update(model({k: {'x': x[k].to(device), 'z': torch.cat([s[k], c], dim=1)}
                         for k in keys}, train_d=False, joint=True))
    g_loss = sum(losses.values())
    optimizer_g.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer_g.step()
    model_ema.lerp(model, 0.9999)
    return d_loss.item() + g_loss.item()  # the scripts log both, which synchronises

  model.train()
  for _ in range(args.warmup):
    iteration()
  start, steps = time.perf_counter(), 0
  while steps < args.steps or time.perf_counter() - start < args.seconds:
    iteration()
    steps += 1
  seconds = (time.perf_counter() - start) / steps
  from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  counter = flop_counter.FlopCounterMode(display=False)
  with counter:
    iteration()
  print(json.dumps(dict(
      implementation='reference (PyTorch)', experiment=args.experiment,
      modalities=len(keys), discriminator=args.discriminator, batch_size=b,
      ms_per_iteration=round(1000 * seconds, 2), iterations_per_s=round(1 / seconds, 2),
      gflop_per_iteration=round(counter.get_total_flops() / 1e9, 2),
      torch=torch.__version__, device=device, threads=torch.get_num_threads(),
      machine=platform.processor() or platform.machine(), timed_iterations=steps)))


if __name__ == '__main__':
  main()
