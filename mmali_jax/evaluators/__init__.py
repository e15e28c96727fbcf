"""Evaluation: everything that scores a trained model (docs/algorithm.md §9).

- `evaluator.Evaluator`: built once per process from (config, classifiers), run on any EMA
  parameters (the training loop's in-memory ones, or those the evaluate command restores).
- `latent_probe`: linear probe on sampled encoder latents (latent accuracy; Tables 1-3).
- `coherence`: joint, cross and synergy coherence judged by pre-trained classifiers (Table 2).
- `classifiers`: training, saving and loading of those coherence classifiers.
- `figures`: the paper's Figures 3 and 4.
- `report`: the paper's numbers and the report beside them.

Nothing here imports the training loop.
"""
