"""The transaction-value models: a BERT-style encoder and the median baselines, one contract.

Every model maps a window of T consecutive transactions to quantiles of each
position's log value::

    ids    (B, T, 4) int64    sender id, receiver id, hour, weekday (models.txs)
    num    (B, T, F) float32  NUM_FEATURES, unscaled (the scaling is inside the model)
    value  (B, T)    float32  log(value_eth + EPS) where revealed, anything where masked
    masked (B, T)    float32  1 = this position's value is hidden
    -> q   (B, T, 3)          q10, q50, q90 of log(value_eth + EPS)

Serving hides the last position and reads its row; training hides a random
fraction of positions and always the last (BERT's masked-token objective, with
the serving case always in the batch). The medians share the contract so the
reference itself can be exported and served when the encoder does not beat it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from chaincast.models.evaluate import pinball
from chaincast.models.txs import NUM_FEATURES, RECEIVER, SENDER

QUANTILES = (0.1, 0.5, 0.9)
TX_FAMILIES: tuple[str, ...] = ("median", "sender_median", "receiver_median", "transformer")


@dataclass
class TxEncoderConfig:
    n_addresses: int  # Vocab.size
    window: int = 32  # transactions per window (T)
    n_num: int = len(NUM_FEATURES)
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 64
    dropout: float = 0.1
    mask_frac: float = 0.15  # share of positions hidden besides the last one


class TxEncoder(nn.Module):
    """Token embeddings + a bidirectional transformer encoder + a monotone quantile head."""

    def __init__(self, cfg: TxEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.sender = nn.Embedding(cfg.n_addresses, d)
        self.receiver = nn.Embedding(cfg.n_addresses, d)
        self.hour = nn.Embedding(24, d)
        self.weekday = nn.Embedding(7, d)
        self.pos = nn.Parameter(torch.zeros(cfg.window, d))
        self.num = nn.Linear(cfg.n_num, d)
        self.value = nn.Linear(2, d)  # [scaled value or 0, masked flag]
        self.prior = nn.Linear(2, d)  # [sender median, receiver median] of the training values, scaled
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ff, cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)  # q50, log-width below, log-width above
        # Fitted on the train split, part of the exported graph (serving never refits).
        self.register_buffer("num_mean", torch.zeros(cfg.n_num))
        self.register_buffer("num_std", torch.ones(cfg.n_num))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        # Medians per known sender and receiver (MedianTable's q50), fitted on the train split: the encoder
        # starts from what the median baselines know and learns the correction (residual), in the graph.
        self.register_buffer("sender_q50", torch.zeros(cfg.n_addresses))
        self.register_buffer("receiver_q50", torch.zeros(cfg.n_addresses))

    def fit_priors(self, ids: np.ndarray, y: np.ndarray, buckets: int) -> None:
        """Per-address medians from training rows ids (N, 4), y (N,)."""
        for col, buf in ((SENDER, self.sender_q50), (RECEIVER, self.receiver_q50)):
            table = MedianTable(self.cfg.n_addresses, col).fit(ids, y, buckets)
            buf.copy_(table.table[:, 1])

    def fit_scaling(self, num: np.ndarray, y: np.ndarray) -> None:
        std = num.std(0)
        self.num_mean.copy_(torch.from_numpy(num.mean(0)).float())
        self.num_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)).float())
        self.y_mean.fill_(float(y.mean()))
        self.y_std.fill_(float(max(y.std(), 1e-6)))

    def scaled(self, ids: torch.Tensor, num: torch.Tensor, value: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Quantiles in scaled units (what the loss sees): (B, T, 3)."""
        v = (value - self.y_mean) / self.y_std * (1.0 - masked)  # (B, T): hidden values never leak
        ps = (self.sender_q50[ids[..., SENDER]] - self.y_mean) / self.y_std  # (B, T)
        pr = (self.receiver_q50[ids[..., RECEIVER]] - self.y_mean) / self.y_std  # (B, T)
        x = (self.sender(ids[..., SENDER]) + self.receiver(ids[..., RECEIVER]) + self.hour(ids[..., 2])
             + self.weekday(ids[..., 3]) + self.num((num - self.num_mean) / self.num_std)
             + self.value(torch.stack([v, masked], dim=-1)) + self.prior(torch.stack([ps, pr], dim=-1))
             + self.pos)  # (B, T, d)
        h = self.norm(self.encoder(x, is_causal=False))  # (B, T, d); no mask: every position sees the window
        out = self.head(h)  # (B, T, 3)
        mid = 0.5 * (ps + pr) + out[..., 0]  # (B, T): a correction to the medians' view
        lo = mid - F.softplus(out[..., 1])  # quantiles cannot cross
        hi = mid + F.softplus(out[..., 2])
        return torch.stack([lo, mid, hi], dim=-1)  # (B, T, 3)

    def forward(self, ids: torch.Tensor, num: torch.Tensor, value: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return self.scaled(ids, num, value, masked) * self.y_std + self.y_mean  # (B, T, 3) in log value


class MedianTable(nn.Module):
    """Quantiles of the training values, per sender or receiver id (``column``) or global (``column`` None).

    Ids with fewer than ``min_rows`` training rows (and the hashed unknown buckets) get the global quantiles.
    """

    def __init__(self, n_addresses: int, column: int | None) -> None:
        super().__init__()
        self.column = column
        self.register_buffer("table", torch.zeros(n_addresses, 3))

    def fit(self, ids: np.ndarray, y: np.ndarray, buckets: int, min_rows: int = 1) -> MedianTable:
        glob = np.quantile(y, QUANTILES)
        table = np.tile(glob, (self.table.shape[0], 1))
        if self.column is not None:
            col = ids[:, self.column]
            order = np.argsort(col, kind="stable")
            keys, starts = np.unique(col[order], return_index=True)
            for key, part in zip(keys, np.split(y[order], starts[1:])):
                if key > buckets and len(part) >= min_rows:  # known addresses only
                    table[key] = np.quantile(part, QUANTILES)
        self.table.copy_(torch.from_numpy(table).float())
        return self

    def forward(self, ids: torch.Tensor, num: torch.Tensor, value: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        key = ids[..., self.column] if self.column is not None else torch.zeros_like(ids[..., 0])  # (B, T)
        # Every input takes part in the graph, so each exported model has the same signature.
        zero = (num.sum(-1, keepdim=True) * 0 + (value * masked).unsqueeze(-1) * 0).nan_to_num(0.0)  # (B, T, 1)
        return self.table[key] + zero  # (B, T, 3)


def median_model(kind: str, n_addresses: int, ids: np.ndarray, y: np.ndarray, buckets: int) -> MedianTable:
    column = {"median": None, "sender_median": SENDER, "receiver_median": RECEIVER}[kind]
    return MedianTable(n_addresses, column).fit(ids, y, buckets).eval()


@dataclass
class TxFit:
    epochs: int = 6
    patience: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    max_windows: int = 20_000  # training windows per epoch at most (a random subset)
    seed: int = 0


def last_masked(y_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, masked) for windows (R, T) whose last position is the one to forecast."""
    masked = np.zeros_like(y_windows, dtype=np.float32)
    masked[:, -1] = 1.0
    value = np.where(masked > 0, 0.0, y_windows).astype(np.float32)
    return value, masked


def predict_last(model: nn.Module, ids: np.ndarray, num: np.ndarray, y: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Quantiles (R, 3) of the last position of each window, the others revealed."""
    value, masked = last_masked(y)
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            s = slice(i, i + batch)
            q = model(torch.from_numpy(ids[s]), torch.from_numpy(num[s]), torch.from_numpy(value[s]),
                      torch.from_numpy(masked[s]))
            out.append(q[:, -1].double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3))


def train_encoder(cfg: TxEncoderConfig, train: tuple[np.ndarray, np.ndarray, np.ndarray],
                  val: tuple[np.ndarray, np.ndarray, np.ndarray], fit: TxFit | None = None, buckets: int = 8,
                  progress: Callable[[int, float, float], None] | None = None) -> tuple[TxEncoder, dict[str, float]]:
    """Masked-value training on windows ``train`` = (ids (R,T,4), num (R,T,F), y (R,T)); early stopping on the
    validation MAE of the last position. Returns the best model and {"val_mae", "epochs"}."""
    fit = fit or TxFit()
    torch.manual_seed(fit.seed)
    rng = np.random.default_rng(fit.seed)
    model = TxEncoder(cfg)
    ids, num, y = train
    model.fit_scaling(num.reshape(-1, num.shape[-1]), y.reshape(-1))
    model.fit_priors(ids[:, -1], y[:, -1].astype(np.float64), buckets)
    opt = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=1e-4)
    levels = torch.tensor(QUANTILES)
    best, best_state, bad, epoch = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(fit.epochs):
        model.train()
        order = rng.permutation(len(ids))[: fit.max_windows]
        total = 0.0
        for i in range(0, len(order), fit.batch_size):
            b = order[i : i + fit.batch_size]
            yb = torch.from_numpy(y[b]).float()  # (b, T)
            masked = (torch.rand(yb.shape) < cfg.mask_frac).float()
            masked[:, -1] = 1.0
            q = model.scaled(torch.from_numpy(ids[b]), torch.from_numpy(num[b]), yb, masked)  # (b, T, 3)
            sel = masked > 0
            target = ((yb - model.y_mean) / model.y_std)[sel]
            loss = pinball(target, q[sel], levels)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(b)
        val_mae = float(np.mean(np.abs(predict_last(model, *val)[:, 1] - val[2][:, -1])))
        if progress is not None:
            progress(epoch, total / max(len(order), 1), val_mae)
        if val_mae < best:
            best, best_state, bad = val_mae, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= fit.patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), {"val_mae": best, "epochs": epoch + 1}


def config_dict(cfg: TxEncoderConfig) -> dict[str, int | float]:
    return asdict(cfg)
