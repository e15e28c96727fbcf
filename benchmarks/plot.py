"""A benchmark table as a PNG beside it: iterations per second of each case (the jitted step, the
training command, the authors' iteration in the same run) and the speed-up over the reference,
against the 2x the CPU target asks for.

`run.py` draws it with every table it writes. To draw it again from a table's JSON:

  python benchmarks/plot.py benchmarks/results/*.json   # writes <name>.png beside each <name>.json
"""
import json
import math
import os
import sys

from matplotlib import figure
from matplotlib import ticker

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmali_jax import images  # pylint: disable=g-import-not-at-top,wrong-import-position

RATES = (('step', 'step_iterations_per_s', 'step_error', '#4c72b0'),
         ('training loop', 'loop_iterations_per_s', 'loop_error', '#55a868'),
         ('reference', 'reference_iterations_per_s', 'reference_error', '#c44e52'))
TARGET_SPEEDUP = 2.0  # on CPU, over the reference measured in the same run
# On one H100/H200: the rates at which the paper's 250,000 steps take under 5 and 9 minutes.
GPU_TARGETS = {'MultiMNIST M=2': 1000, 'MNIST-SVHN': 500}


def _finite(record, key):
  """record[key] if it is a finite positive number (a rate, a speed-up), else None."""
  value = record.get(key)
  if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
    return value
  return None


def draw(summary):
  """The Figure of `summary` (what run.py writes as JSON): two panels, iterations per second by
  case (log scale) and the speed-up over the reference; a step, loop or reference that failed is
  marked where its bar would be."""
  results = summary['results']
  names = [r['case'] for r in results]
  on_cpu = summary['device'].startswith('cpu')
  fig = figure.Figure(figsize=(13, 2.4 + 0.55 * max(len(results), 3)), layout='constrained')
  rates_ax, speedup_ax = fig.subplots(1, 2, gridspec_kw={'width_ratios': [3, 2]})
  height = 0.8 / len(RATES)
  drawn = []  # every rate drawn
  for i, (label, key, error, color) in enumerate(RATES):
    slot = lambda y, i=i: y - 0.4 + (i + 0.5) * height  # this rate's bar in row y
    rows = [(y, v) for y, r in enumerate(results) if (v := _finite(r, key))]
    drawn += [v for _, v in rows]
    if rows:
      bars = rates_ax.barh([slot(y) for y, _ in rows], [v for _, v in rows], height,
                           color=color, label=label)
      rates_ax.bar_label(bars, fmt='%g', padding=2, fontsize=8)
    for y, r in enumerate(results):
      if error in r:  # where its bar would be
        rates_ax.text(0.01, slot(y), f'{label} failed', va='center', color='#c44e52',
                      fontsize=8, transform=rates_ax.get_yaxis_transform())
  if not on_cpu:
    marked = False
    for y, r in enumerate(results):
      target = next((v for k, v in GPU_TARGETS.items() if r['case'].startswith(k)), None)
      if target:
        rates_ax.plot([target] * 2, [y - 0.45, y + 0.45], color='black', linestyle='--',
                      linewidth=1, label=None if marked else 'GPU target')
        marked = True
  rates_ax.set_xscale('log')
  if drawn:  # room for the labels right of the longest bar (and the GPU targets)
    rightmost = max(drawn + ([] if on_cpu else list(GPU_TARGETS.values())))
    rates_ax.set_xlim(min(drawn) / 1.5, rightmost * 1.4)
  rates_ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
  rates_ax.xaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
  rates_ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  rates_ax.set_xlabel('iterations per second (log scale)')
  rates_ax.set_title('iterations per second')
  rates_ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8,
                  frameon=False)

  measured = [(y, v) for y, r in enumerate(results) if (v := _finite(r, 'speedup_vs_reference'))]
  if measured:
    bars = speedup_ax.barh([y for y, _ in measured], [v for _, v in measured], 0.6,
                           color='#8172b3')
    speedup_ax.bar_label(bars, fmt='%.2fx', padding=2, fontsize=8)
    speedup_ax.axvline(1, color='black', linewidth=0.8)
    if on_cpu:
      speedup_ax.axvline(TARGET_SPEEDUP, color='black', linestyle='--', linewidth=1,
                         label=f'{TARGET_SPEEDUP:g}x, the CPU target')
      speedup_ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.12), fontsize=8,
                        frameon=False)
    speedup_ax.set_xlim(0, 1.2 * max([TARGET_SPEEDUP] + [v for _, v in measured]))
  else:
    speedup_ax.text(0.5, 0.5, 'no reference measured in this run', ha='center', va='center',
                    transform=speedup_ax.transAxes)
  speedup_ax.set_xlabel('training loop (else step) rate / reference rate')
  speedup_ax.set_title('speed-up over the authors\' PyTorch code')
  for ax in (rates_ax, speedup_ax):
    ax.set_yticks(range(len(results)), names if ax is rates_ax else [''] * len(results))
    ax.set_ylim(len(results) - 0.5, -0.5)  # the table's order, top to bottom
  title = (f'{summary["device"]}, {summary["date"]}, jax {summary["jax"]}; float32 matmul peak '
           f'{summary["matmul_peak_gflop_per_s"]} GFLOP/s')
  if 'incomplete' in summary:
    title += f'\nincomplete: {summary["incomplete"]}'
  fig.suptitle(title, fontsize=10)
  return fig


def write(summary, path):
  """Draws `summary` to the PNG `path`, replaced whole (a reader never sees half a file)."""
  images.save_figure(draw(summary), path)


def main(paths):
  if not paths:
    sys.exit(__doc__)
  for path in paths:
    with open(path) as f:
      summary = json.load(f)
    if 'results' not in summary or not all('case' in r for r in summary['results']):
      print(f'{path}: not a table of benchmarks/run.py; skipped.')
      continue
    write(summary, os.path.splitext(path)[0] + '.png')
    print(f'{path} -> {os.path.splitext(path)[0]}.png')


if __name__ == '__main__':
  main(sys.argv[1:])
