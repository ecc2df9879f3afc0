"""The option-logit losses, the CogCalib gate / threshold and RCFT's E-step against hand values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from llmcal.finetune import losses as L  # noqa: E402

Z = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, -9.0]])  # second row: 3 options
MASK = torch.tensor([[True, True, True, True], [True, True, True, False]])
Y = torch.tensor([0, 1])


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


P0 = _softmax([2.0, 1.0, 0.0, -1.0])
P1 = _softmax([0.5, 0.5, 3.0])


def test_option_nll_restricted_to_valid_options() -> None:
    nll = L.option_nll(Z, Y, MASK)
    assert nll.tolist() == pytest.approx([-math.log(P0[0]), -math.log(P1[1])], abs=1e-6)


def test_label_smoothing_is_ce_to_uniform() -> None:
    want = [-sum(map(math.log, P0)) / 4, -sum(map(math.log, P1)) / 3]
    assert L.ls_reg(Z, MASK).tolist() == pytest.approx(want, abs=1e-6)


def test_mbls_hinge_on_logit_distances() -> None:
    # row 0: distances to the max 0, 1, 2, 3; margin 1.5 → hinge 0, 0, .5, 1.5 → mean 0.5
    # row 1: distances 2.5, 2.5, 0 (the -9 option is padding) → hinge 1, 1, 0 → mean 2/3
    assert L.mbls_reg(Z, MASK, margin=1.5).tolist() == pytest.approx([0.5, 2 / 3], abs=1e-6)
    assert L.mbls_reg(Z, MASK, margin=10.0).tolist() == [0.0, 0.0]


def test_ecp_is_negative_entropy() -> None:
    want = [sum(p * math.log(p) for p in P0), sum(p * math.log(p) for p in P1)]
    assert L.ecp_reg(Z, MASK).tolist() == pytest.approx(want, abs=1e-6)


def test_regulariser_gradients_flow() -> None:
    z = Z.clone().requires_grad_(True)
    (L.ls_reg(z, MASK).sum() + L.ecp_reg(z, MASK).sum()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert z.grad[1, 3] == 0  # padding option gets no gradient


def test_gate_is_detached_hard_and_off_without_threshold() -> None:
    nll = torch.tensor([0.1, 0.5, 0.9], requires_grad=True)
    gate = L.known_gate(nll, 0.5)
    assert gate.tolist() == [1.0, 1.0, 0.0] and not gate.requires_grad
    assert L.known_gate(nll, None).tolist() == [0.0, 0.0, 0.0]
    assert L.known_gate(nll, -math.inf).sum() == 0  # t below every loss: vanilla
    assert L.known_gate(nll, math.inf).sum() == 3  # t above every loss: ungated


def test_youden_threshold_on_constructed_nlls() -> None:
    nll = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.8, 1.2, 1.5])
    known = torch.tensor([1, 1, 1, 0, 1, 0, 0]).bool()
    # t = .3: TPR 3/4, TNR 3/3 → J 1.75; t = .8: TPR 1, TNR 2/3 → 1.67; t = .35: .75 + .67
    assert L.youden_threshold(nll, known) == pytest.approx(0.3)
    sep = torch.tensor([0.4, 0.1, 2.0, 0.2, 3.0])
    assert L.youden_threshold(sep, torch.tensor([1, 1, 0, 1, 0]).bool()) == pytest.approx(0.4)
    assert L.youden_threshold(sep, torch.ones(5).bool()) == pytest.approx(3.0)
    assert L.youden_threshold(sep, torch.zeros(5).bool()) == -math.inf


def test_rcft_bins_follow_bucketize_right() -> None:
    conf = torch.tensor([0.0, 0.05, 0.1, 0.25, 0.899, 0.9, 1.0])
    assert L.rcft_bin(conf).tolist() == [0, 0, 1, 2, 8, 9, 9]


def test_e_step_counts_accuracies_and_empty_bins() -> None:
    conf = torch.tensor([0.35, 0.38, 0.31, 0.92, 0.95, 0.61])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    counts, hits = L.e_step_stats(conf, correct)
    assert counts.tolist() == [0, 0, 0, 3, 0, 0, 1, 0, 0, 2]
    acc = L.bin_accuracy(counts, hits)
    assert acc[3].item() == pytest.approx(2 / 3) and acc[6] == 0 and acc[9] == 1
    # empty bins take the nearest filled bin (ties to the lower one): 0-2 → 3, 4 → 3, 5 → 6,
    # 7 → 6, 8 → 9 (not 0 as in the authors' nan_to_num)
    assert acc.tolist() == pytest.approx([2 / 3] * 5 + [0, 0, 0, 1, 1])


def test_rcft_targets_match_the_spec_worked_examples() -> None:
    mask = torch.ones(2, 4, dtype=torch.bool)
    p = torch.tensor([[0.97, 0.02, 0.007, 0.003], [0.15, 0.35, 0.3, 0.2]], dtype=torch.float64)
    t, order = L.rcft_targets(p, torch.tensor([0.6, 0.3]), mask)
    assert t[0].tolist() == pytest.approx([0.60, 0.155, 0.136, 0.109], abs=6e-4)
    assert t[1].tolist() == pytest.approx([0.30, 0.251, 0.233, 0.217], abs=6e-4)
    assert order[1].tolist() == [1, 2, 3, 0]
    assert t.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert not t.requires_grad


def test_rcft_targets_edge_cases_and_k_from_data() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.9, 0.1, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    t, _ = L.rcft_targets(p, torch.tensor([0.5, 0.8], dtype=torch.float64), mask)
    g = math.log(2) / (0.5 * 0.2)  # K = 3 from the data: ln(K − 1)
    h = [math.tanh(g * 0.2), math.tanh(g * 0.1)]
    want = [0.5, 0.5 * (1 + h[0]) / (sum(h) + 2), 0.5 * (1 + h[1]) / (sum(h) + 2), 0.0]
    assert t[0].tolist() == pytest.approx(want, abs=1e-9)
    assert t[1].tolist() == pytest.approx([0.8, 0.2, 0.0, 0.0], abs=1e-9)  # K = 2
    done, _ = L.rcft_targets(p[:1], torch.tensor([1.0]), mask[:1])
    assert done[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_rcft_sample_error_uses_each_examples_bin() -> None:
    p = torch.tensor([[0.97, 0.02, 0.007, 0.003]], dtype=torch.float64, requires_grad=True)
    acc = torch.full((10,), 0.6, dtype=torch.float64)
    err, b = L.rcft_sample_error(p, acc, torch.ones(1, 4, dtype=torch.bool))
    want = (0.97 - 0.6) ** 2 + (0.02 - 0.1554) ** 2 + (0.007 - 0.1362) ** 2 + (0.003 - 0.1085) ** 2
    assert b.tolist() == [9] and err.item() == pytest.approx(want, abs=2e-4)
    err.sum().backward()
    assert p.grad is not None and p.grad[0, 0] == pytest.approx(2 * (0.97 - 0.6))


def test_token_ce_with_label_smoothing() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    logp = torch.log_softmax(logits, -1)[0, 0]
    plain = L.token_ce_sum(logits, torch.tensor([[2]]), torch.ones(1, 1))
    assert plain.item() == pytest.approx(-logp[2].item())
    smooth = L.token_ce_sum(logits, torch.tensor([[2]]), torch.ones(1, 1), smoothing=0.1)
    assert smooth.item() == pytest.approx(-0.9 * logp[2].item() - 0.1 * logp.mean().item())
    assert L.token_ce_sum(logits, torch.tensor([[2]]), torch.zeros(1, 1)).item() == 0
