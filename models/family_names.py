"""The model families by name, without importing torch (the CLI's help and validation need only names).

>>> FAMILIES
('linear', 'lightgbm', 'gru', 'lstm', 'transformer', 'persistence', 'ema_drift', 'har')
"""

from __future__ import annotations

LEARNED: tuple[str, ...] = ("linear", "lightgbm", "gru", "lstm", "transformer")
BASELINES: tuple[str, ...] = ("persistence", "ema_drift")
REFERENCES: tuple[str, ...] = (*BASELINES, "har")  # closed-form references every backtest runs
FAMILIES: tuple[str, ...] = LEARNED + REFERENCES
