"""The method registry as plain data, for ``dynamickv methods`` to print without importing torch.

Generated from :func:`dynamickv.methods.describe_methods`; ``tests/test_cli.py`` fails when the two
differ. Regenerate after changing a method's name, summary, paper or parameters::

    python -m dynamickv.catalog
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# fmt: off
CATALOG: list[dict[str, Any]] = [{'name': 'fullkv',
  'summary': 'no compression: every prompt token is kept (the reference)',
  'paper': '-',
  'params': {'window': 0},
  'head_adaptive': False,
  'head_adaptive_option': False,
  'recommended': False},
 {'name': 'streamingllm',
  'summary': 'attention sinks (first 4 tokens) + the most recent tokens; needs no scores',
  'paper': 'Xiao et al. 2024, Efficient Streaming Language Models with Attention Sinks (arXiv 2309.17453)',
  'params': {'window': 0, 'sinks': 4},
  'head_adaptive': False,
  'head_adaptive_option': False,
  'recommended': False},
 {'name': 'h2o',
  'summary': 'heavy hitters: top accumulated attention of the last 32 queries, no pooling',
  'paper': 'Zhang et al. 2023, H2O: Heavy-Hitter Oracle (arXiv 2306.14048)',
  'params': {'window': 32, 'heads': 'uniform', 'head_floor': 0.2},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'snapkv',
  'summary': 'observation-window attention, max-pooled (k=7), top tokens per KV head, w=32',
  'paper': 'Li et al. 2024, SnapKV: LLM Knows What You are Looking for Before Generation (arXiv '
           '2404.14469)',
  'params': {'window': 32,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 7,
             'pooling': 'max',
             'quiet_sinks': 0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'snapkv-forward',
  'summary': "SnapKV with forward pooling (k=12), w=8, uniform budgets: keeps the answer's continuation",
  'paper': "this library's variant of SnapKV (arXiv 2404.14469); see docs/evaluation.md",
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 12,
             'pooling': 'forward',
             'quiet_sinks': 0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'snapkv-decay',
  'summary': 'SnapKV with decay pooling (half-life 12), quiet sinks, w=8, uniform budgets: long spans kept',
  'paper': "this library's variant of SnapKV (arXiv 2404.14469); see docs/evaluation.md",
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 12,
             'pooling': 'decay',
             'quiet_sinks': 4},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': True},
 {'name': 'pyramidkv',
  'summary': 'SnapKV selection with a linear per-layer pyramid (beta=20), w=8',
  'paper': 'Cai et al. 2024, PyramidKV: Pyramidal Information Funneling (arXiv 2406.02069)',
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 7,
             'pooling': 'max',
             'quiet_sinks': 0,
             'beta': 20.0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'dynamickv',
  'summary': "layer-adaptive budgets from the model's attention, re-allocated every m=4 layers",
  'paper': 'Zhou et al. 2025, DynamicKV: Task-Aware Adaptive KV Cache Compression (arXiv 2412.14838)',
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 7,
             'pooling': 'avg',
             'quiet_sinks': 0,
             'r_max': 10.0,
             'update_every': 4,
             'allocation': 'authors',
             'min_ratio': 0.0,
             'min_tokens': 0,
             'normalize': 'none',
             'sink': 0,
             'rows': 'shared',
             'tau1': 1.0,
             'tau2': 1.0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'dynamickv-robust',
  'summary': 'DynamicKV with forward pooling (k=12) and a per-layer floor of half the base budget',
  'paper': "this library's variant of DynamicKV (arXiv 2412.14838); see docs/diagnosis.md",
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 12,
             'pooling': 'forward',
             'quiet_sinks': 0,
             'r_max': 10.0,
             'update_every': 4,
             'allocation': 'authors',
             'min_ratio': 0.5,
             'min_tokens': 0,
             'normalize': 'none',
             'sink': 0,
             'rows': 'shared',
             'tau1': 1.0,
             'tau2': 1.0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'dynamickv-preference',
  'summary': "DynamicKV's cascade with CAKE's layer shares (entropy x variance), decay pooling, 32-token "
             'floor',
  'paper': "this library's variant: CAKE's shares (arXiv 2503.12491) in DynamicKV (arXiv 2412.14838)",
  'params': {'window': 8,
             'heads': 'uniform',
             'head_floor': 0.2,
             'kernel': 12,
             'pooling': 'decay',
             'quiet_sinks': 4,
             'r_max': 10.0,
             'update_every': 4,
             'allocation': 'preference',
             'min_ratio': 0.0,
             'min_tokens': 32,
             'normalize': 'none',
             'sink': 0,
             'rows': 'shared',
             'tau1': 1.0,
             'tau2': 1.0},
  'head_adaptive': False,
  'head_adaptive_option': True,
  'recommended': False},
 {'name': 'windowkv',
  'summary': 'whole token windows chosen per layer group, pyramid budgets, task-adaptive mode',
  'paper': 'Zuo et al. 2025, WindowKV: Task-Adaptive Group-Wise KV Cache Window Selection (arXiv '
           '2503.17922)',
  'params': {'window': 0, 'mode': 'auto', 'omega': None, 'alpha': None, 'gamma': None, 'lam': 14.0},
  'head_adaptive': False,
  'head_adaptive_option': False,
  'recommended': False},
 {'name': 'adakv',
  'summary': 'SnapKV scores, layer budget split across KV heads by one top-k (Ada-KV), floor 0.2',
  'paper': 'Feng et al. 2024, Ada-KV: Adaptive Budget Allocation for KV Cache Eviction (arXiv 2407.11550)',
  'params': {'window': 32,
             'heads': 'adaptive',
             'head_floor': 0.2,
             'kernel': 7,
             'pooling': 'max',
             'quiet_sinks': 0},
  'head_adaptive': True,
  'head_adaptive_option': True,
  'recommended': False}]
# fmt: on


def write() -> Path:
    """Rewrite this file's :data:`CATALOG` from the registry."""
    import pprint

    from .methods import describe_methods

    path = Path(__file__)
    text = path.read_text()
    head, rest = text.split("# fmt: off\n", 1)
    _, tail = rest.split("# fmt: on\n", 1)
    body = "CATALOG: list[dict[str, Any]] = " + pprint.pformat(
        describe_methods(), width=108, sort_dicts=False
    )
    path.write_text(head + "# fmt: off\n" + body + "\n# fmt: on\n" + tail)
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
