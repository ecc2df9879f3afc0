"""DACA: exact recovery, masking, ablations, parity with the authors' Adam loop, top-k references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcal.calibrate import DACA, CalibrationWarning, agreement_mask, reference_distribution
from llmcal.errors import CalibrationError
from llmcal.scores import Scores

K = 4


def make_scores(logits: np.ndarray, ids: list[str] | None = None, **meta: object) -> Scores:
    n = len(logits)
    return Scores(
        ids=np.array(ids if ids is not None else [f"q{i}" for i in range(n)], dtype=object),
        logits=logits,
        labels=np.full(n, -1),
        meta={"task": "synthetic", **meta},
    )


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(p: np.ndarray, z: np.ndarray) -> float:
    """Mean of −Σ p log σ(z) over rows, by hand."""
    logq = z - z.max(axis=1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(axis=1, keepdims=True))
    return float(np.mean(-(np.where(p > 0, p * logq, 0.0)).sum(axis=1)))


def grid_tau(p: np.ndarray, z: np.ndarray, lo: float, hi: float) -> float:
    """The CE-minimising τ by a coarse then a fine grid (step ≤ 1e-6 · range)."""
    taus = np.linspace(lo, hi, 2001)
    best = taus[np.argmin([cross_entropy(p, z / t) for t in taus])]
    step = taus[1] - taus[0]
    fine = np.linspace(best - step, best + step, 2001)
    return float(fine[np.argmin([cross_entropy(p, z / t) for t in fine])])


@pytest.fixture(scope="module")
def ref_logits() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(600, K)) * 1.5


def swapped(z: np.ndarray) -> np.ndarray:
    """Each row's top and bottom logits exchanged: the target's pick is the reference's least likely."""
    out = z.copy()
    rows = np.arange(len(z))
    top, bottom = z.argmax(axis=1), z.argmin(axis=1)
    out[rows, top], out[rows, bottom] = z[rows, bottom], z[rows, top]
    return out


@pytest.fixture(scope="module")
def mixed(ref_logits: np.ndarray) -> tuple[Scores, Scores, float]:
    """400 rows where target = c · reference, 200 where the target picks the reference's worst."""
    c = 2.0
    zt = c * ref_logits.copy()
    zt[400:] = c * swapped(ref_logits[400:])
    return make_scores(zt, model="polm"), make_scores(ref_logits, model="plm"), c


@pytest.mark.parametrize("c", [0.5, 2.0, 3.7])
def test_temperature_recovers_scale(ref_logits: np.ndarray, c: float) -> None:
    d = DACA().fit(make_scores(c * ref_logits), make_scores(ref_logits))
    assert abs(d.temperature - c) < 1e-6 * c
    assert d.fit_info_ is not None
    assert d.fit_info_["n_used"] == len(ref_logits) and abs(d.fit_info_["kl"]) < 1e-12


@settings(max_examples=60, deadline=None)
@given(
    c=st.floats(0.05, 50.0),
    n=st.integers(1, 40),
    k=st.integers(2, 6),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_temperature_recovers_any_scale(c: float, n: int, k: int, scale: float, seed: int) -> None:
    zr = np.random.default_rng(seed).normal(size=(n, k)) * scale
    d = DACA().fit(make_scores(c * zr), make_scores(zr))
    assert abs(d.temperature - c) <= 1e-6 * c


@pytest.mark.parametrize("c", [0.5, 2.0, 3.7])
def test_vector_and_matrix_recover_scale(ref_logits: np.ndarray, c: float) -> None:
    target, reference = make_scores(c * ref_logits), make_scores(ref_logits)
    vs = DACA(scaler="vector").fit(target, reference)
    params = vs.get_fitted_params()
    np.testing.assert_allclose(params["w"], 1.0 / c, atol=1e-6)
    np.testing.assert_allclose(params["b"], 0.0, atol=1e-6)
    ms = DACA(scaler="matrix").fit(target, reference)
    # softmax ignores a per-row shift, so W is identified up to 1·vᵀ: compare centred maps
    mapped = ms.transform(target).logits
    want = ref_logits
    np.testing.assert_allclose(
        mapped - mapped.mean(axis=1, keepdims=True),
        want - want.mean(axis=1, keepdims=True),
        atol=1e-6,
    )
    np.testing.assert_allclose(ms.get_fitted_params()["b"], 0.0, atol=1e-6)


def test_disagreements_are_ignored_and_naive_alignment_overshoots(
    mixed: tuple[Scores, Scores, float],
) -> None:
    target, reference, c = mixed
    daca = DACA().fit(target, reference)
    assert abs(daca.temperature - c) < 1e-9
    assert daca.fit_info_ is not None
    assert daca.fit_info_["n_used"] == 400 and daca.fit_info_["n_disagree"] == 200
    naive = DACA(mask="none").fit(target, reference)
    assert naive.fit_info_ is not None and naive.fit_info_["n_used"] == 600
    assert naive.temperature > daca.temperature + 0.1
    # the vector scaler is not fooled either
    vs = DACA(scaler="vector").fit(target, reference)
    np.testing.assert_allclose(vs.get_fitted_params()["w"], 1.0 / c, atol=1e-6)


def test_disagreement_only_fit_diverges_with_flag(mixed: tuple[Scores, Scores, float]) -> None:
    target, reference, _ = mixed
    with pytest.warns(CalibrationWarning, match="Prop. 3.3"):
        d = DACA(mask="disagree", tau_range=(1e-3, 1e3)).fit(target, reference)
    assert d.fit_info_ is not None and d.fit_info_["diverged"] is True
    assert d.fit_info_["tau_bound"] == "tau_max" and d.temperature == pytest.approx(1e3)
    assert d.fit_info_["n_used"] == 200


def test_mask_does_not_depend_on_temperature(mixed: tuple[Scores, Scores, float]) -> None:
    target, reference, _ = mixed
    base = agreement_mask(target.logits, reference.logits)
    assert base.sum() == 400
    for tau in (0.05, 0.7, 1.0, 3.0, 250.0):
        np.testing.assert_array_equal(agreement_mask(target.logits / tau, reference.logits), base)
    d = DACA().fit(target, reference)
    assert d.mask_ is not None
    np.testing.assert_array_equal(d.mask_, base)
    out = d.transform(target)
    np.testing.assert_array_equal(agreement_mask(out.logits, reference.logits), base)
    np.testing.assert_array_equal(out.predictions(), target.predictions())


def test_model_paired_with_itself(ref_logits: np.ndarray) -> None:
    s = make_scores(ref_logits)
    assert DACA().fit(s, s).temperature == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(
        DACA(scaler="vector").fit(s, s).get_fitted_params()["w"], 1.0, atol=1e-7
    )


def test_labels_are_never_used(ref_logits: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    zt = 1.8 * ref_logits + rng.normal(size=ref_logits.shape)
    unlabelled = make_scores(zt)
    labelled = unlabelled.replace(labels=rng.integers(0, K, len(zt)))
    ref = make_scores(ref_logits)
    assert DACA().fit(labelled, ref).temperature == DACA().fit(unlabelled, ref).temperature


def test_eq8_mask_is_recomputed_until_it_settles(ref_logits: np.ndarray) -> None:
    # the target favours option 1 by a constant bias; vector scaling removes it, which turns
    # disagreements on option 1 into agreements
    zt = ref_logits + np.array([0.0, 1.0, 0.0, 0.0])
    target, reference = make_scores(zt), make_scores(ref_logits)
    raw_agree = int(agreement_mask(zt, ref_logits).sum())
    d = DACA(scaler="vector").fit(target, reference)
    info = d.fit_info_
    assert info is not None
    assert info["mask_changes"][0] > 0 and info["mask_changes"][-1] == 0 and info["mask_converged"]
    mapped = d.transform(target).logits
    assert info["n_used"] == int(agreement_mask(mapped, ref_logits).sum()) > raw_agree
    assert d.mask_ is not None
    np.testing.assert_array_equal(d.mask_, agreement_mask(mapped, ref_logits))
    fixed = DACA(scaler="vector", fixed_mask=True).fit(target, reference)
    assert fixed.fit_info_ is not None and fixed.fit_info_["n_used"] == raw_agree
    assert fixed.fit_info_["mask_changes"] == []


def test_parity_mode_lands_near_exact() -> None:
    rng = np.random.default_rng(7)
    zr = rng.normal(size=(200, K)) * 1.5
    target, reference = make_scores(2.0 * zr + 0.3 * rng.normal(size=zr.shape)), make_scores(zr)
    exact = DACA().fit(target, reference)
    parity = DACA(parity=True).fit(target, reference)
    assert abs(parity.temperature - exact.temperature) < 1e-2
    info = parity.fit_info_
    assert info is not None
    assert len(info["history"]["tau"]) == 400 and len(info["history"]["loss"]) == 400
    assert info["history"]["tau"][-1] == parity.temperature
    assert info["exact_temperature"] == exact.temperature
    assert info["solver"].startswith("adam")


def test_parity_loss_is_averaged_over_the_whole_batch(mixed: tuple[Scores, Scores, float]) -> None:
    target, reference, _ = mixed
    d = DACA(parity=True, epochs=1, batch_size=1000, parity_dtype="float64").fit(target, reference)
    assert d.fit_info_ is not None
    first = d.fit_info_["history"]["loss"][0]  # evaluated at τ0 = 1 before the first step
    p = np.clip(softmax(reference.logits), 1e-8, 1 - 1e-8)
    q = np.clip(softmax(target.logits), 1e-8, 1 - 1e-8)
    per_row = -(p * np.log(q)).sum(axis=1)
    agree = agreement_mask(target.logits, reference.logits)
    assert first == pytest.approx(per_row[agree].sum() / len(per_row), rel=1e-12)  # not / n_agree
    assert first != pytest.approx(per_row[agree].mean(), rel=1e-3)


def test_parity_is_seeded_and_disagreement_tau_keeps_rising(
    mixed: tuple[Scores, Scores, float],
) -> None:
    target, reference, _ = mixed
    runs = [
        DACA(parity=True, epochs=40, batch_size=64, seed=s).fit(target, reference).fit_info_
        for s in (3, 3, 4)
    ]
    assert runs[0] is not None and runs[1] is not None and runs[2] is not None
    assert runs[0]["history"]["tau"] == runs[1]["history"]["tau"]
    assert runs[0]["history"]["tau"] != runs[2]["history"]["tau"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)  # the exact comparison diverges
        dis = DACA(mask="disagree", parity=True, lr=0.1).fit(target, reference)
    assert dis.fit_info_ is not None
    tau = dis.fit_info_["history"]["tau"]
    assert 1.0 < tau[20] < tau[100] < tau[200] < tau[399]  # Fig. 2b: no finite optimum
    assert dis.fit_info_["exact_diverged"] is True


def test_parity_vector_scaler_records_history(mixed: tuple[Scores, Scores, float]) -> None:
    target, reference, _ = mixed
    d = DACA(scaler="vector", parity=True, epochs=30).fit(target, reference)
    info = d.fit_info_
    assert info is not None
    assert np.array(info["history"]["params"]).shape == (30, 2 * K)
    assert len(info["history"]["mask_changes"]) == 30


def test_no_agreeing_examples(ref_logits: np.ndarray) -> None:
    target, reference = make_scores(swapped(ref_logits)), make_scores(ref_logits)
    with pytest.raises(CalibrationError, match=r"no questions agree .*0 agree, 600 disagree"):
        DACA().fit(target, reference)
    same = make_scores(ref_logits)
    with pytest.raises(CalibrationError, match="no questions disagree"):
        DACA(mask="disagree").fit(same, same)


def test_ids_must_align(ref_logits: np.ndarray) -> None:
    target = make_scores(2 * ref_logits)
    ids = [f"q{i}" for i in range(600)]
    ids[5] = "other"
    reference = make_scores(ref_logits, ids=ids)
    with pytest.raises(CalibrationError, match="599 common questions with --align inner"):
        DACA().fit(target, reference)
    # no common questions: the --align hint cannot help and is not offered
    disjoint = make_scores(ref_logits, ids=[f"x{i}" for i in range(600)])
    with pytest.raises(CalibrationError) as err:
        DACA().fit(target, disjoint)
    assert "--align" not in str(err.value) and "align=" not in str(err.value)
    d = DACA(align="inner").fit(target, reference)
    assert d.fit_info_ is not None and d.fit_info_["n_total"] == 599
    assert abs(d.temperature - 2.0) < 1e-9
    # labels are not used, but contradictory labels reveal mismatched data
    lab = make_scores(2 * ref_logits).replace(labels=np.zeros(600, dtype=int))
    other = make_scores(ref_logits).replace(labels=np.r_[1, np.zeros(599, dtype=int)])
    with pytest.raises(CalibrationError, match="labels disagree for id 'q0'"):
        DACA().fit(lab, other)
    # order does not matter: alignment is by id
    perm = np.random.default_rng(0).permutation(600)
    shuffled = make_scores(ref_logits[perm], ids=[f"q{i}" for i in perm])
    assert abs(DACA().fit(target, shuffled).temperature - 2.0) < 1e-9


def test_option_counts_must_match(ref_logits: np.ndarray) -> None:
    zt = 2 * ref_logits
    zt[3, 3] = -np.inf
    with pytest.raises(CalibrationError, match="different option counts"):
        DACA().fit(make_scores(zt), make_scores(ref_logits))
    # a padding column on one side only is fine
    wide = np.concatenate([ref_logits, np.full((600, 1), -np.inf)], axis=1)
    assert abs(DACA().fit(make_scores(2 * ref_logits), make_scores(wide)).temperature - 2) < 1e-9
    with pytest.raises(CalibrationError, match="same number of options"):
        DACA(scaler="vector").fit(
            make_scores(zt), make_scores(np.where(np.isinf(zt), -np.inf, ref_logits))
        )


def test_affine_transform_checks_option_count(ref_logits: np.ndarray) -> None:
    d = DACA(scaler="matrix").fit(make_scores(2 * ref_logits), make_scores(ref_logits))
    with pytest.raises(CalibrationError, match="fitted on 4 options"):
        d.transform(make_scores(np.zeros((2, 5)) + np.arange(5)))
    with pytest.raises(CalibrationError, match="no single"):
        _ = d.temperature


FLOOR = -30.0
TOPK_REF = np.array(
    [
        [np.log(0.5), np.log(0.2), FLOOR, FLOOR],
        np.log([0.1, 0.2, 0.3, 0.4]),
        [np.log(0.6), FLOOR, FLOOR, FLOOR],
    ]
)
TOPK_TARGET = np.array([[2.0, 0.5, -1.0, -1.5], [-1.0, 0.0, 0.5, 2.0], [3.0, 0.0, 0.2, -0.5]])


def test_topk_reference_spread_and_renormalize() -> None:
    reference = make_scores(TOPK_REF, topk={"k": 2, "floor": FLOOR})
    spread, info = reference_distribution(reference, "spread")
    want_spread = [[0.5, 0.2, 0.15, 0.15], [0.1, 0.2, 0.3, 0.4], [0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3]]
    np.testing.assert_allclose(spread, want_spread, rtol=1e-14, atol=1e-15)
    assert info["rows_filled"] == 2 and info["options_filled"] == 5
    renorm, _ = reference_distribution(reference, "renormalize")
    want_renorm = [[5 / 7, 2 / 7, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0]]
    np.testing.assert_allclose(renorm, want_renorm, rtol=1e-14, atol=1e-15)
    # without the top-k marker the floor is just a logit
    plain, info = reference_distribution(make_scores(TOPK_REF), "spread")
    np.testing.assert_allclose(plain, softmax(TOPK_REF), rtol=1e-14)
    assert info["rows_filled"] == 0


@pytest.mark.parametrize(
    ("missing", "p"),
    [
        (
            "spread",
            [[0.5, 0.2, 0.15, 0.15], [0.1, 0.2, 0.3, 0.4], [0.6, 0.4 / 3, 0.4 / 3, 0.4 / 3]],
        ),
        ("renormalize", [[5 / 7, 2 / 7, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0]]),
    ],
)
def test_topk_fit_uses_filled_reference(missing: str, p: list[list[float]]) -> None:
    reference = make_scores(TOPK_REF, topk={"k": 2, "floor": FLOOR})
    d = DACA(missing=missing).fit(make_scores(TOPK_TARGET), reference)
    assert abs(d.temperature - grid_tau(np.array(p), TOPK_TARGET, 0.05, 5.0)) < 1e-5
    info = d.fit_info_
    assert info is not None
    assert info["reference"]["missing"] == missing
    assert info["reference"]["rows_filled"] == 2 and info["reference"]["options_filled"] == 5
    assert info["reference"]["topk"] == {"k": 2, "floor": FLOOR}


def test_topk_spread_needs_log_probs() -> None:
    bad = np.array([[np.log(0.7), np.log(0.6), FLOOR, FLOOR], [0.0, -1.0, -2.0, -3.0]])
    reference = make_scores(bad, topk={"k": 2, "floor": FLOOR})
    with pytest.raises(CalibrationError, match="not log-probabilities"):
        DACA().fit(make_scores(TOPK_TARGET[:2]), reference)


def test_options_validated() -> None:
    for kwargs in ({"scaler": "platt"}, {"mask": "all"}, {"missing": "zero"}, {"align": "outer"}):
        with pytest.raises(CalibrationError):
            DACA(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("c", [1.0, 3.0, 0.2])
def test_temperature_exact_on_a_peaked_single_row(c: float) -> None:
    # p2 ≈ 1e-12: the curvature is ~1e-9, so an unshifted gradient (E_q z − Σ p z, both ≈ 12)
    # cancels to ~ulp(12) and τ came out 1.0000089 for c = 1 (found by hypothesis).
    zr = np.array([[12.24551473, -15.33399019]])
    ref = Scores(ids=["q"], logits=zr, labels=[-1])
    tgt = Scores(ids=["q"], logits=c * zr, labels=[-1])
    d = DACA().fit(tgt, ref)
    assert abs(d.temperature - c) <= 1e-9 * c
