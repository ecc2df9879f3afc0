"""Per-example losses on the K option logits, the CogCalib gate and threshold, RCFT's E-step.

Everything here is a pure function of tensors and returns *per-example* values (shape ``[B]``),
so the trainer can sum them and divide by the global number of examples in the optimizer step:
the result then does not depend on gradient accumulation or the number of processes.

``z`` is ``[B, K]`` option logits, ``mask`` ``[B, K]`` bool (False = padding option of a
question with fewer than K choices), ``y`` ``[B]`` gold indices.
"""

from __future__ import annotations

import math

import torch

#: Number of equal-width confidence bins of RCFT's E-step (edges 0, .1, …, .9) [code].
RCFT_BINS = 10


def masked_log_softmax(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the valid options; padding options get -inf."""
    return torch.log_softmax(z.masked_fill(~mask, float("-inf")), dim=-1)


def option_nll(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−log p(y) under the softmax restricted to the valid options."""
    return -masked_log_softmax(z, mask).gather(-1, y[:, None]).squeeze(-1)


def _n_valid(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(-1).to(torch.float32)


def ls_reg(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Label smoothing term: CE to the uniform distribution, −(1/K) Σ_k log p_k."""
    logp = masked_log_softmax(z, mask).masked_fill(~mask, 0.0)
    return -logp.sum(-1) / _n_valid(mask)


def mbls_reg(z: torch.Tensor, mask: torch.Tensor, margin: float = 10.0) -> torch.Tensor:
    """Margin-based LS (Liu et al. 2022): (1/K) Σ_k max(0, max_j z_j − z_k − m)."""
    zmax = z.masked_fill(~mask, float("-inf")).max(-1, keepdim=True).values
    hinge = torch.relu(zmax - z - margin).masked_fill(~mask, 0.0)
    return hinge.sum(-1) / _n_valid(mask)


def ecp_reg(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy confidence penalty (Pereyra et al. 2017): −H(p) = Σ_k p_k log p_k."""
    logp = masked_log_softmax(z, mask)
    return (logp.exp() * logp.masked_fill(~mask, 0.0)).sum(-1)


REGULARISERS = ("ls", "mbls", "ecp")


def regulariser(kind: str, z: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-example L_cal of ``kind`` (ls, mbls or ecp)."""
    if kind == "ls":
        return ls_reg(z, mask)
    if kind == "mbls":
        return mbls_reg(z, mask, margin)
    if kind == "ecp":
        return ecp_reg(z, mask)
    raise ValueError(f"unknown regulariser {kind!r}")


def known_gate(nll: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """CogCalib's I = 1[NLL ≤ t], detached; all zeros while no threshold is fitted."""
    if threshold is None:
        return torch.zeros_like(nll)
    return (nll.detach() <= threshold).to(nll.dtype)


def youden_threshold(nll: torch.Tensor, known: torch.Tensor) -> float:
    """t maximising TPR + TNR of "NLL ≤ t ⇒ known" over the grid of unique NLLs.

    Ties go to the smallest t. With no unknown example every t ≥ max(NLL) is perfect and
    max(NLL) is returned; with no known example, −inf (nothing is gated as known).
    """
    nll = nll.detach().double().flatten()
    known = known.flatten().bool()
    if nll.numel() == 0:
        raise ValueError("youden_threshold needs at least one example")
    if not bool(known.any()):
        return -math.inf
    if bool(known.all()):
        return float(nll.max())
    grid = torch.unique(nll)  # sorted ascending
    below = nll[None, :] <= grid[:, None]  # [T, N]
    tpr = (below & known).sum(-1).double() / known.sum()
    tnr = (~below & ~known).sum(-1).double() / (~known).sum()
    return float(grid[int(torch.argmax(tpr + tnr))])


# -- RCFT --------------------------------------------------------------------------------------
def rcft_bin(confidence: torch.Tensor, n_bins: int = RCFT_BINS) -> torch.Tensor:
    """0-based bin of each confidence: [0, .1) → 0, …, [.9, 1] → 9 (torch.bucketize, right=True)."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return (torch.bucketize(confidence, edges[:-1], right=True) - 1).clamp(0, n_bins - 1)


def e_step_stats(
    confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = RCFT_BINS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin counts and correct counts (float64) of one shard; sum them over shards."""
    b = rcft_bin(confidence.detach(), n_bins)
    counts = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device)
    hits = torch.zeros_like(counts)
    counts.index_add_(0, b, torch.ones_like(b, dtype=torch.float64))
    hits.index_add_(0, b, correct.detach().to(torch.float64))
    return counts, hits


def bin_accuracy(counts: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """acc_m per bin; an empty bin takes the accuracy of the nearest non-empty bin.

    The authors' code leaves empty bins at 0 (``nan_to_num``), which pulls any example that
    later lands there towards 0 confidence; the spec (§7.7) uses the nearest non-empty bin.
    """
    counts = counts.double()
    filled = torch.nonzero(counts > 0).flatten()
    if filled.numel() == 0:
        raise ValueError("RCFT E-step saw no examples")
    acc = hits.double() / counts.clamp(min=1)
    idx = torch.arange(counts.numel(), device=counts.device)
    nearest = filled[torch.argmin((idx[:, None] - filled[None, :]).abs(), dim=1)]  # ties → lower
    return acc[nearest]


def rcft_targets(
    probs: torch.Tensor, acc: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RCFT targets for the descending-sorted option probabilities, and that sort order.

    t_0 = acc; for the K_i − 1 other valid options, γ = ln(K_i − 1) / ((1 − acc)·q_1),
    t_j = (1 − acc)(1 + tanh(γ q_j)) / (Σ_j tanh(γ q_j) + K_i − 1); all zero when acc = 1.
    K_i is the example's own number of options (the authors' code hard-codes K − 1 = 3).
    Padding options sort last and get target 0. The targets are detached (EM semantics; the
    authors' code backpropagates through them).
    """
    p = probs.detach().masked_fill(~mask, -1.0)
    q, order = torch.sort(p, dim=-1, descending=True)
    valid = torch.gather(mask, -1, order)
    k = valid.sum(-1).to(q.dtype)  # K_i
    acc = acc.to(q.dtype)
    rest = (1.0 - acc).clamp(min=0.0)
    q1 = q[:, 1].clamp(min=1e-12)
    gamma = torch.log((k - 1).clamp(min=1.0)) / (rest.clamp(min=1e-12) * q1)
    h = torch.tanh(gamma[:, None] * q[:, 1:].clamp(min=0.0)) * valid[:, 1:]
    denom = h.sum(-1) + (k - 1)
    others = rest[:, None] * (1.0 + h) / denom[:, None] * valid[:, 1:]
    others = torch.where((acc >= 1.0)[:, None], torch.zeros_like(others), others)
    return torch.cat([acc[:, None], others], dim=-1), order


def rcft_sample_error(
    probs: torch.Tensor, acc_per_bin: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ‖sorted p − t‖² (= (c − acc_m)² + Σ_j (q_j − t_j)²) and each example's bin."""
    p = probs.masked_fill(~mask, 0.0)
    b = rcft_bin(p.detach().max(-1).values, acc_per_bin.numel())
    target, order = rcft_targets(p, acc_per_bin.to(p.dtype)[b], mask)
    q = torch.gather(p, -1, order)
    valid = torch.gather(mask, -1, order)
    return ((q - target) ** 2 * valid).sum(-1), b


def token_ce_sum(
    logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Σ over weighted positions of the full-vocabulary CE (optionally label-smoothed), per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    if smoothing:
        nll = (1.0 - smoothing) * nll - smoothing * logp.mean(-1)
    return (nll.double() * weight).sum(-1)  # float64 sums: exact-ish across batch layouts


def rcft_code_ece(err: torch.Tensor, n_m: torch.Tensor, alpha: float) -> torch.Tensor:
    """The authors' ECE term α·1e-3·Σ_i err_i / n_m(i) (float64), n_m = whole-set bin counts.

    An example in a bin that was empty at the E-step would divide by 0 in the code (inf);
    it gets weight 1/|B| instead (cft_rcft.md §7.7).
    """
    n = n_m.double()
    w = torch.where(n > 0, 1.0 / n.clamp(min=1.0), torch.full_like(n, 1.0 / max(1, len(err))))
    return alpha * 1e-3 * (err.double() * w).sum()
