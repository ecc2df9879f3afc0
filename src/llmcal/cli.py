"""The ``llmcal`` command line: score, eval, fit, apply, report, finetune, demo and list.

Every user error is an ``LLMCalError``: the CLI prints one line ``llmcal: error: …`` and exits 2,
without a traceback. Outputs are written atomically, so a failed command leaves no half-written
file behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmcal._cliutil import Parser, add_group, add_hf_loading, hf_loading
from llmcal._io import atomic_write_text, check_writable_dir
from llmcal._version import __version__
from llmcal.errors import ConfigError, LLMCalError, ScoresError, one_line, quote

EXIT_USAGE = 2
#: Upper bounds of size arguments, checked before any work (a run with --resamples 10**9 once
#: grew to 15 GB): histogram / ECE bins and bootstrap resamples.
MAX_BINS = 1000
MAX_RESAMPLES = 100_000
#: Seeds: non-negative and below 2**32 (what numpy's legacy seeding, used by the trainer, takes).
MAX_SEED = 2**32 - 1


# -- helpers ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _bounded_int(lo: int, hi: int, what: str = "an integer") -> Any:
    """An argparse type: an integer in ``lo..hi``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {quote(text)}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} in {lo}..{hi}, got {quote(value)}")
        return value

    return parse


def _finite_float(lo: float, hi: float, *, open_lo: bool = False) -> Any:
    """An argparse type: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {quote(text)}") from None
        low_ok = value > lo if open_lo else value >= lo
        if not (math.isfinite(value) and low_ok and value <= hi):
            left = "(" if open_lo else "["
            raise argparse.ArgumentTypeError(
                f"expected a finite number in {left}{lo:g}, {hi:g}], got {quote(text)}"
            )
        return value

    return parse


_seed = _bounded_int(0, MAX_SEED, "a non-negative integer seed")
_fraction = _finite_float(0.0, 1.0)
_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)")


def _device(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (checked before
    anything loads, so a typo never costs a model load)."""
    if not _DEVICE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"unknown device {quote(text)}; use auto, cpu, cuda, cuda:N or mps"
        )
    return text


def _out_path(path: str, suffixes: Sequence[str], flag: str) -> Path:
    """Check an output path before any expensive work: right suffix, writable folder."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {quote(path)}: expected a {' or '.join(suffixes)} file")
    if out.is_dir():
        raise ConfigError(f"{flag} {quote(path)} is a directory; give a file name")
    check_writable_dir(out.parent, f"{flag} {quote(path)}")
    return out


#: Per command: the arguments naming files it reads, and those naming files it writes.
#: :func:`_check_paths` refuses an output that is one of the inputs (through symlinks too).
_PATH_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "score": (("task", "model", "adapter"), ("out",)),
    "eval": (("scores",), ("json", "plot")),
    "fit": (("scores", "target", "reference"), ("out", "oof")),
    "apply": (("calibrator", "scores"), ("out",)),
    "report": (("runs", "calibrator", "conformal", "selective"), ("out",)),
    "import": (("samples", "responses", "results", "task"), ("out",)),
    "generate": (("task", "model", "labels"), ("out",)),
    "judge": (("answers", "labels"), ("out",)),
    "confidence": (("answers", "model"), ("out",)),
    "finetune": (("task", "model"), ("out",)),
}


def _paths_of(args: argparse.Namespace, names: Sequence[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name in names:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v:
                found.append((f"--{name}" if name in ("out", "json", "plot", "oof") else name, v))
    return found


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except (OSError, RuntimeError):  # a symlink loop: the output could not be written anyway
        return False


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse a command whose output would overwrite one of its own inputs."""
    inputs, outputs = _PATH_ARGS.get(args.command, ((), ()))
    ins = _paths_of(args, inputs)
    outs = _paths_of(args, outputs)
    if args.command == "score":  # the checkpoint beside --out is written too
        from llmcal.models.checkpoint import checkpoint_path

        outs += [("the checkpoint of --out", str(checkpoint_path(v))) for _, v in list(outs)]
    for flag, out in outs:
        for name, src in ins:
            if _same_file(out, src):
                raise ConfigError(
                    f"{flag} {quote(out)} is also the input {name} {quote(src)}; writing it would "
                    "replace the input. Choose another output path"
                )


def _load_task(args: argparse.Namespace, spec: str | None = None) -> Any:
    from llmcal.tasks import load_task

    spec = args.task if spec is None else spec
    kwargs: dict[str, Any] = {}
    if getattr(args, "columns", None):
        from llmcal.tasks import parse_mapping

        kwargs["mapping"] = parse_mapping(args.columns)
    if getattr(args, "split", None):
        kwargs["split"] = args.split
    task = load_task(spec, data_dir=args.data_dir, **kwargs)
    if args.subject:
        task = task.filter(args.subject)
        if not len(task):
            raise ConfigError(f"task {spec!r} has no questions of subject(s) {args.subject}")
    return task


def _load_scores(path: str, command: str) -> Any:
    """``Scores.load(path)``, refusing a file without rows (nothing to measure or calibrate)."""
    from llmcal.scores import Scores

    scores = Scores.load(path)
    if len(scores) == 0:
        raise ScoresError(
            f"{path} holds no questions (0 rows), so there is nothing to {command}; "
            "score some questions first (llmcal score ... --out RUN.parquet)"
        )
    return scores


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


# -- commands -----------------------------------------------------------------------------------
def _task_specs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(task spec, output file) pairs: ``--task a,b --out-dir DIR`` → ``DIR/a.parquet``, …"""
    specs = [t.strip() for t in args.task.split(",")] if args.out_dir else [args.task]
    if not all(specs):
        raise ConfigError(f"--task {args.task!r}: empty task name in the comma-separated list")
    if args.out_dir is None:
        if args.out is None:
            raise ConfigError("give --out FILE.parquet (one task) or --out-dir DIR (one per task)")
        if "," in args.task and not Path(args.task).exists():
            raise ConfigError(
                f"--task {args.task!r} names several tasks; write one Scores per task with "
                "--out-dir DIR instead of --out"
            )
        return [(args.task, _out_path(args.out, [".parquet"], "--out"))]
    if args.out is not None:
        raise ConfigError("give either --out FILE (one task) or --out-dir DIR, not both")
    folder = Path(args.out_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out-dir {args.out_dir!r} is a file; give a folder")
    pairs: list[tuple[str, Path]] = []
    for spec in specs:
        stem = Path(spec).stem if (Path(spec).suffix or "/" in spec) else spec
        name = re.sub(r"[^\w.-]+", "_", stem).strip("_.") or "task"
        out = folder / f"{name}.parquet"
        if any(out == o for _, o in pairs):
            raise ConfigError(f"--task {args.task!r}: two tasks would both write {out}")
        pairs.append((spec, out))
    return pairs


def cmd_score(args: argparse.Namespace) -> int:
    """Score one or more tasks with a model (in-process or through endpoints); save the Scores."""
    from llmcal.tasks import get_template

    pairs = _task_specs(args)
    template = get_template(args.template)
    if args.shots and (template.chat or args.mode != "letter"):
        raise ConfigError("--shots works with plain letter-mode templates (e.g. daca1)")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    tasks = [(_load_task(args, spec), out) for spec, out in pairs]  # data errors before the model
    scorer = _score_backend(args, template)
    for task, out in tasks:
        _score_one(args, scorer, task, out)
    if len(tasks) > 1:
        _print(f"wrote {len(tasks)} Scores files to {args.out_dir}")
    return 0


def _score_one(args: argparse.Namespace, scorer: Any, task: Any, out: Path) -> None:
    """Score one task with the loaded ``scorer`` through a checkpoint beside ``out``."""
    from llmcal._cliutil import resolve_limit
    from llmcal.models.checkpoint import CheckpointedScorer
    from llmcal.progress import note
    from llmcal.tasks import fewshot_split, get_template

    template = get_template(args.template)
    shots: list[Any] = []
    if args.shots:
        shots, task = fewshot_split(task, args.shots, seed=args.seed)
        template = get_template(f"fewshot-{args.shots}")
    task = task.subset(
        resolve_limit(args.limit, len(task)), seed=None if args.no_shuffle else args.seed
    )
    kwargs: dict[str, Any] = {
        "mode": args.mode,
        "template": template,
        "normalization": args.normalization,
        "shots": shots,
    }
    score_fn: Any = None
    extra: dict[str, Any] = {}
    if args.permutations:
        from llmcal.models.cape import score_cape

        def score_fn(s: Any, t: Any, **kw: Any) -> Any:
            return score_cape(s, t, permutations=args.permutations, cap=args.permutation_cap, **kw)

        extra = {"cape": args.permutations, "cap": args.permutation_cap}
    runner = CheckpointedScorer(
        scorer,
        out,
        chunk_size=args.chunk_size,
        resume=not args.restart,
        score_fn=score_fn,
        extra_key=extra,
    )
    mode = args.mode + (f" ({args.normalization})" if args.mode == "cloze" else "")
    runner.announce = (
        f"scoring {args.model} on {task.name}: n={len(task)}, mode {mode}, template "
        f"{template.name}"
        + (f", {args.shots} shots" if args.shots else "")
        + (f", CAPE {args.permutations}" if args.permutations else "")
    )
    start = time.perf_counter()
    try:
        scores = runner.score(task, **kwargs)
    except LLMCalError as exc:
        if runner.path.exists() and (runner.resumed_rows or runner.scored_rows):
            kept = runner.resumed_rows + runner.scored_rows
            raise type(exc)(
                f"{exc} [{kept} of {len(task)} questions are kept in {runner.path}; rerun the "
                "same command to resume]"
            ) from exc
        raise
    except KeyboardInterrupt:
        if runner.path.exists() and (runner.resumed_rows or runner.scored_rows):
            kept = runner.resumed_rows + runner.scored_rows
            note(f"{kept} of {len(task)} questions are kept in {runner.path}; rerun to resume")
        raise
    elapsed = time.perf_counter() - start
    scores = scores.replace(meta={"seconds": round(elapsed, 3)})
    scores.save(out)
    runner.discard()
    rate = runner.scored_rows / elapsed if elapsed > 0 else 0.0
    line = f"scored {runner.scored_rows} questions in {elapsed:.1f}s ({rate:.2f} q/s)"
    if runner.resumed_rows:
        line += f", {runner.resumed_rows} resumed from the checkpoint"
    if scores.has_labels:
        line += f"; accuracy {scores.correct().mean():.4f}, mean confidence {scores.confidences().mean():.4f}"
    _print(line)
    stats = getattr(scorer, "stats", None)
    if stats is not None:
        _print(f"requests: {stats.summary()}")
    _print(f"wrote {out}")


def _score_backend(args: argparse.Namespace, template: Any) -> Any:
    """The scorer `llmcal score` runs: HTTPScorer with --endpoint, HFScorer otherwise."""
    if not args.endpoint:
        from llmcal.models import HFScorer

        return HFScorer(
            args.model,
            adapter=args.adapter,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            trust_remote_code=args.trust_remote_code,
            progress=False,
            **hf_loading(args),
        )
    from llmcal.models.http import HTTPScorer

    if args.adapter or args.permutations:
        raise ConfigError("--adapter and --permutations are not available with --endpoint")
    scorer = HTTPScorer(
        args.endpoint,
        args.model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        timeout=args.timeout,
        max_retries=args.retries,
        top_k=args.top_k,
        progress=False,
    )
    caps = scorer.probe(echo=args.mode == "cloze")
    _print(f"server: {caps.describe()}")
    scorer.check_capabilities(args.mode, template.chat)
    api = "/v1/completions" if args.mode == "cloze" or not template.chat else "/v1/chat/completions"
    _print(f"mode: {args.mode} via {api} (top-{scorer.effective_top_k} log-probs)")
    return scorer


def cmd_eval(args: argparse.Namespace) -> int:
    """Print calibration metrics of a Scores file; optionally write JSON and a diagram."""
    from llmcal.metrics import evaluate
    from llmcal.report.tables import render, summary_table

    json_out = _out_path(args.json, [".json"], "--json") if args.json else None
    plot_out = _out_path(args.plot, [".png"], "--plot") if args.plot else None
    if _eval_guarantee(args, json_out, plot_out):
        return 0
    scores = _load_scores_or_table(args)
    result = evaluate(
        scores,
        n_bins=args.bins,
        binning=args.binning,
        ci=not args.no_ci,
        n_resamples=args.resamples,
        seed=args.seed,
    )
    meta = scores.meta
    _print(
        f"{args.scores}: model {meta.get('model', '?')} · task {meta.get('task', '?')} · "
        f"mode {meta.get('mode', '?')} · template {meta.get('template', '?')}"
        + (" · view answer (confidence = p(answer is right))" if scores.view == "answer" else "")
    )
    _print(summary_table({"value": result}))
    _warn_eval(scores, result)
    subjects = result.get("subjects") or {}
    if subjects and args.subjects:
        rows = sorted(subjects.items(), key=lambda kv: -kv[1]["ece"])
        _print()
        _print(
            render(
                ["subject", "n", "accuracy", "confidence", "ECE"],
                [
                    [
                        s,
                        str(r["n"]),
                        f"{r['accuracy']:.3f}",
                        f"{r['mean_confidence']:.3f}",
                        f"{r['ece']:.3f}",
                    ]
                    for s, r in rows
                ],
            )
        )
    if json_out:
        payload = {"file": str(args.scores), "meta": meta, "metrics": result}
        atomic_write_text(json_out, json.dumps(payload, indent=2) + "\n")
        _print(f"wrote {json_out}")
    if plot_out:
        from llmcal.report.plots import save_reliability_png

        name = str(meta.get("model", Path(args.scores).stem))
        save_reliability_png(
            {name: (scores.confidences(), scores.correct())},
            plot_out,
            n_bins=args.bins,
            binning=args.binning,
        )
        _print(f"wrote {plot_out}")
    return 0


def _warn_eval(scores: Any, result: dict[str, Any]) -> None:
    """Accuracy below chance or AUROC below 0.5 usually means a broken prompt or label map."""
    import numpy as np

    from llmcal._cliutil import warn

    answer_view = scores.view == "answer"
    n_options = np.isfinite(np.asarray(scores.logits, dtype=np.float64)).sum(axis=1)
    chance = float(np.mean(1.0 / np.maximum(n_options, 1)))
    acc = result.get("accuracy")
    # in the answer view accuracy is the share of right free-form answers: no chance level
    if isinstance(acc, float) and acc < chance and not answer_view:
        warn(
            f"accuracy {acc:.3f} is below chance ({chance:.3f} for these option counts): check "
            "the template, the answer letters and the label column"
        )
    auroc = result.get("auroc")
    if isinstance(auroc, float) and auroc < 0.5:
        check = (
            "this confidence method carries inverse signal here (try another --method), or "
            "the judgements are inverted"
            if answer_view
            else "check the scoring mode and the label column"
        )
        warn(
            f"AUROC {auroc:.3f} is below 0.5: confidence ranks wrong answers above right ones; "
            + check
        )


def _load_scores_or_table(args: argparse.Namespace) -> Any:
    """A Scores file, or with --foreign / --columns a plain table of probabilities or logits."""
    from llmcal.errors import ScoresError

    if not (args.foreign or args.columns):
        if Path(args.scores).suffix.lower() in (".csv", ".tsv"):
            raise ConfigError(
                f"{args.scores} is a table, not a Scores file; pass --foreign to read its "
                "probabilities as they are (and --columns to name its columns)"
            )
        try:
            return _load_scores(args.scores, "evaluate")
        except ScoresError as exc:
            if "no llmcal metadata" not in str(exc):
                raise
            raise ScoresError(f"{exc}; or pass --foreign to read it as a plain table") from None
    from llmcal.interop.table import read_foreign_table

    given = {k: v for k, v in (("model", args.model), ("task", args.task)) if v}
    scores, unknown = read_foreign_table(args.scores, args.columns, given)
    if unknown:
        print(
            f"llmcal: warning: {args.scores} has no llmcal metadata: {', '.join(unknown)} "
            "unknown (give --model / --task to record them); the scores are taken as they are",
            file=sys.stderr,
        )
    return scores


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a calibrator on Scores and save it as a JSON artefact."""
    from llmcal.calibrate import CALIBRATORS

    out = _out_path(args.out, [".json"], "--out")
    _check_guarantee_flags(args)
    if args.kind in ("conformal", "selective"):
        if args.cross_fit or args.oof:
            raise ConfigError(f"--cross-fit / --oof are for calibrators, not {args.kind}")
        return _fit_guarantee(args, out)
    if args.kind == "daca" and (args.cross_fit or args.oof):
        raise ConfigError("--cross-fit / --oof are for supervised calibrators, not daca")
    if args.oof and not args.cross_fit:
        raise ConfigError("--oof needs --cross-fit K (out-of-fold Scores come from k-fold fits)")
    if args.kind in ("daca", "daca-subject"):
        if args.scores or not (args.target and args.reference):
            raise ConfigError(
                "llmcal fit daca takes --target POLM.parquet --reference PLM.parquet (no positional file)"
            )
        cal: Any = _daca_calibrator(args)
        fit_on = _load_scores(args.target, "fit")
        cal.fit(target=fit_on, reference=_load_scores(args.reference, "fit"))
    else:
        if not args.scores or args.target or args.reference:
            raise ConfigError(
                f"llmcal fit {args.kind} takes one labelled Scores file: llmcal fit {args.kind} "
                "RUN.parquet --out cal.json (--target/--reference are for daca)"
            )
        options = {"n_bins": args.bins} if args.kind == "histogram" else {}
        if args.cross_fit:
            return _fit_cross(args, CALIBRATORS[args.kind](**options), out)
        fit_on = _load_scores(args.scores, "fit")
        cal = CALIBRATORS[args.kind](**options).fit(fit_on)
    cal.save(out)
    for line in _fit_summary(args.kind, cal, fit_on):
        _print(line)
    info = cal.fit_info_ or {}
    if cal.kind == "daca-subject":
        params = cal.get_fitted_params()
        taus = sorted(params["temperatures"].values())
        _print(
            f"{info['n_subjects']} subjects, τ from {taus[0]:.4g} to {taus[-1]:.4g}; "
            f"{info['n_fallback']} with no agreeing question kept τ = 1"
            + (f" ({', '.join(params['fallback_subjects'][:5])})" if info["n_fallback"] else "")
        )
    elif info.get("fallback"):
        _print("no question agreed: kept τ = 1 (--no-agreement fallback)")
    _print(f"wrote {out}")
    return 0


def _fit_summary(kind: str, cal: Any, scores: Any) -> list[str]:
    """``fitted temperature on 300 questions: τ = 1.84 (NLL 1.02 → 0.87)``, and the warnings."""
    from llmcal.calibrate.checks import describe_params, warn_few_questions
    from llmcal.metrics import nll

    info = cal.fit_info_ or {}
    n = info.get("n_used", info.get("n"))
    line = f"fitted {kind} on {n} questions: {describe_params(cal)}"
    if scores is not None and scores.has_labels:
        before = nll(scores.log_probs(), scores.labels, kind="log_probs")
        after = nll(cal.transform(scores).log_probs(), scores.labels, kind="log_probs")
        line += f" (NLL {before:.3f} → {after:.3f}" + (
            " on the target's labels)" if kind == "daca" else ")"
        )
    if kind == "daca":
        _warn_daca_dropped(info)
    warn_few_questions(cal)
    return [line]


def _warn_daca_dropped(info: dict[str, Any]) -> None:
    """How many target questions DACA did not fit on, and why."""
    from llmcal._cliutil import warn

    n, aligned, used = info.get("n"), info.get("n_total"), info.get("n_used")
    if not all(isinstance(v, int) for v in (n, aligned, used)):
        return
    assert isinstance(n, int) and isinstance(aligned, int) and isinstance(used, int)
    reasons = []
    if aligned < n:
        reasons.append(f"{n - aligned} are not in the reference Scores (--align inner)")
    mask = info.get("mask")
    if mask == "agree" and info.get("n_disagree"):
        reasons.append(
            f"{info['n_disagree']} where the two models predict different options (--mask agree)"
        )
    elif mask == "disagree" and info.get("n_agree"):
        reasons.append(f"{info['n_agree']} where the two models agree (--mask disagree)")
    if used < n and reasons:
        warn(
            f"daca fitted on {used} of {n} target questions and dropped {n - used}: "
            + "; ".join(reasons)
        )


def _daca_calibrator(args: argparse.Namespace) -> Any:
    """DACA (one τ) or SubjectDACA (``--per-subject``) from the ``llmcal fit`` options."""
    from llmcal.calibrate import DACA, SubjectDACA

    if args.per_subject or args.kind == "daca-subject":
        if args.scaler != "temperature":
            raise ConfigError("--per-subject fits one temperature per subject: drop --scaler")
        return SubjectDACA(
            mask=args.mask,
            parity=args.parity,
            align=args.align,
            no_agreement=args.no_agreement or "fallback",
            unseen=args.unseen,
        )
    return DACA(
        scaler=args.scaler,
        mask=args.mask,
        parity=args.parity,
        align=args.align,
        no_agreement=args.no_agreement or "error",
    )


def _fit_cross(args: argparse.Namespace, base: Any, out: Path) -> int:
    """``llmcal fit KIND RUN --cross-fit K``: k-fold fits, out-of-fold calibrated Scores."""
    from llmcal.calibrate import CrossFitted

    oof_out = _out_path(args.oof, [".parquet"], "--oof") if args.oof else None
    scores = _load_scores(args.scores, "fit")
    cal = CrossFitted(
        base, n_splits=args.cross_fit, ensemble=not args.no_ensemble, seed=args.seed or 0
    )
    oof = cal.fit_transform(scores)
    cal.save(out)
    info = cal.fit_info_ or {}
    folds = [
        {k: v for k, v in f.items() if k != "n_held_out" and not isinstance(v, list)}
        for f in info.get("folds", [])
    ]
    shown = f"; fold parameters {folds}" if all(folds) else ""
    _print(
        f"cross-fitted {args.kind} in {args.cross_fit} folds on {len(scores)} questions "
        f"({'ensemble of the fold calibrators' if cal.ensemble else 'one refit on all'} for new "
        f"data): out-of-fold accuracy {info['oof_accuracy']:.4f}, NLL {info['oof_nll']:.4f}, "
        f"mean confidence {scores.confidences().mean():.4f} → {oof.confidences().mean():.4f}"
        f"{shown}"
    )
    if oof_out is not None:
        oof.save(oof_out)
        _print(f"wrote {oof_out} (out-of-fold calibrated Scores: evaluate these)")
    _print(f"wrote {out}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply a saved calibrator to Scores and save the calibrated Scores."""
    from llmcal.calibrate import load_calibrator

    out = _out_path(args.out, [".parquet"], "--out")
    if _apply_guarantee(args, out):
        return 0
    from llmcal.calibrate.checks import warn_misapplied

    cal = load_calibrator(args.calibrator)
    scores = _load_scores(args.scores, "calibrate")
    calibrated = cal.transform(scores)  # an error here says more than a mismatch warning
    warn_misapplied(cal, scores, str(args.calibrator))
    calibrated.save(out)
    line = f"applied {cal.kind} to {len(scores)} questions"
    if scores.has_labels:
        line += (
            f"; mean confidence {scores.confidences().mean():.4f} → "
            f"{calibrated.confidences().mean():.4f} (accuracy {calibrated.correct().mean():.4f})"
        )
    _print(line)
    _print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Turn scores computed elsewhere (lm-eval samples, saved API responses) into Scores."""
    out = _out_path(args.out, [".parquet"], "--out")
    if args.source == "lm-eval":
        from llmcal.interop.lm_eval import read_lm_eval_samples

        scores = read_lm_eval_samples(
            args.samples,
            results=args.results,
            task=args.task_name,
            id_field=args.id_field,
            normalization=args.normalization,
            filter_name=args.filter,
        )
        found = scores.meta["lm_eval"]["results_file"]
        extra = f"lm-eval {scores.meta['lm_eval']['version'] or '?'}, " if found else ""
        origin = f"{extra}results file {found or 'not found (no model / version recorded)'}"
    else:
        from llmcal.interop.openai import read_openai_responses

        task = _load_task(args) if args.task else None
        scores = read_openai_responses(args.responses, task=task, model=args.model)
        blind = scores.meta["n_no_option_in_topk"]
        origin = f"{scores.meta['api']} responses, top-{scores.meta['topk']['k']} log-probs"
        if blind:
            origin += f"; {blind} rows have no option in the top-k (chance level)"
    scores.save(out)
    line = (
        f"imported {len(scores)} questions ({origin}): model {scores.meta.get('model') or '?'}, "
        f"task {scores.meta.get('task') or '?'}"
    )
    if scores.has_labels:
        line += (
            f"; accuracy {scores.correct().mean():.4f}, mean confidence "
            f"{scores.confidences().mean():.4f}"
        )
    _print(line)
    _print(f"wrote {out}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Split a Scores file into seeded (stratified) parts, e.g. cal and test."""
    from llmcal.splits import parse_fractions, save_splits, split_scores

    fractions = parse_fractions(args.fractions)
    scores = _load_scores(args.scores, "split")
    parts = split_scores(scores, fractions, seed=args.seed, stratify=args.stratify)
    how = next(iter(parts.values())).meta["split"]["stratify"]
    strata = ""
    if how == "subject" and scores.subjects is not None:
        strata = f" ({len(set(scores.subjects.tolist()))} subjects)"
    sizes = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    paths = save_splits(parts, args.out_dir)
    _print(
        f"split {len(scores)} questions with seed {args.seed}, stratified by {how}{strata}: {sizes}"
    )
    for path in paths:
        _print(f"wrote {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the calibrating OpenAI-compatible proxy in front of --upstream."""
    from llmcal.calibrate import load_calibrator
    from llmcal.serve import Proxy, load_selective, serve

    if args.calibrator is None and args.freeform_calibrator is None:
        raise ConfigError(
            "llmcal serve needs --calibrator FILE (multiple choice), --freeform-calibrator FILE "
            "(free-form answers, fitted on P(True) Scores), or both"
        )
    if args.selective and args.calibrator is None:
        raise ConfigError(
            "--selective applies to --calibrator; for free-form answers use --freeform-selective"
        )
    if args.freeform_selective and args.freeform_calibrator is None:
        raise ConfigError("--freeform-selective needs --freeform-calibrator")
    cal = load_calibrator(args.calibrator) if args.calibrator else None
    rule = load_selective(args.selective) if args.selective else None
    free = load_calibrator(args.freeform_calibrator) if args.freeform_calibrator else None
    free_rule = load_selective(args.freeform_selective) if args.freeform_selective else None
    proxy = Proxy(
        args.upstream,
        cal,
        calibrator_file=args.calibrator,
        selective=rule,
        freeform_calibrator=free,
        freeform_calibrator_file=args.freeform_calibrator,
        freeform_selective=free_rule,
        model=args.model,
        template=args.template,
        timeout=args.timeout,
        retries=args.retries,
        top_k=args.top_k,
        max_connections=args.max_connections,
    )

    def rule_text(r: Any) -> str:
        if r is None:
            return ""
        if r.threshold is None:
            return ", answering nothing (the selective rule met no threshold)"
        return f", abstain below {r.threshold:g}"

    parts = []
    if cal is not None:
        parts.append(
            f"multiple choice: {cal.kind} calibrator from {args.calibrator}{rule_text(rule)}, "
            f"template {proxy.template.name}"
        )
    if free is not None:
        parts.append(
            f"free-form: P(True), {free.kind} calibrator from {args.freeform_calibrator}"
            f"{rule_text(free_rule)}"
        )
    _print(
        f"llmcal serve: {'; '.join(parts)}; upstream {', '.join(proxy.scorer.public_endpoints)}; "
        f"listening on http://{args.host}:{args.port}/v1"
    )
    serve(proxy, host=args.host, port=args.port)
    return 0


def _report_labels(text: str | None, count: int, n_files: int) -> list[str] | None:
    """Display names from --labels: one per run, unique and non-empty."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if len(names) != count:
        raise ConfigError(
            f"--labels gives {len(names)} name(s) for {count} run(s) ({n_files} Scores file(s) "
            f"+ {count - n_files} calibrator(s)); give one comma-separated name per run, the "
            "Scores files first, then the calibrated runs"
        )
    if not all(names):
        raise ConfigError(f"--labels {text!r}: every name must be non-empty")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"--labels {text!r}: names must be unique; {dup!r} appears twice")
    return names


def cmd_report(args: argparse.Namespace) -> int:
    """Write a calibration report (HTML, JSON or Markdown) of one or more Scores files."""
    from llmcal.calibrate import load_calibrator
    from llmcal.calibrate.checks import warn_misapplied
    from llmcal.report.data import FORMATS, ReportRun, build_report, format_for_path

    fmt = args.format
    if fmt is None:
        try:
            fmt = format_for_path(args.out)
        except ConfigError as exc:
            raise ConfigError(f"--out {args.out!r}: {exc}; or give --format") from None
    out = _out_path(args.out, FORMATS[fmt], "--out")
    calibrators = args.calibrator or []
    labels = _report_labels(args.labels, len(args.runs) + len(calibrators), len(args.runs))
    runs: list[ReportRun] = []
    for i, path in enumerate(args.runs):
        scores = _load_scores(path, "report")
        name = labels[i] if labels else Path(path).stem
        taken = {r.name for r in runs}
        if not labels and name in taken:
            name = next(
                f"{name} ({k})" for k in range(2, len(runs) + 3) if f"{name} ({k})" not in taken
            )
        runs.append(ReportRun(name=name, scores=scores, file=str(path)))
    source = runs[-1]
    for j, path in enumerate(calibrators):
        cal = load_calibrator(path)
        try:
            calibrated = cal.transform(source.scores)
        except LLMCalError as exc:
            raise type(exc)(f"{path}: cannot apply it to {source.file}: {exc}") from None
        warn_misapplied(cal, source.scores, f"{path} (applied to {source.file})")
        name = labels[len(args.runs) + j] if labels else f"{source.name} + {Path(path).stem}"
        runs.append(
            ReportRun(
                name=name,
                scores=calibrated,
                file=source.file,
                calibrator_file=str(path),
                calibrated_from=source.name,
            )
        )
    report = build_report(
        runs,
        n_bins=args.bins,
        binning=args.binning,
        n_resamples=args.resamples,
        seed=args.seed,
        tolerance=args.tolerance,
        title=args.title,
        guarantees=_report_guarantees(args, source),
        min_subject_n=args.min_subject_n,
    )
    report.save(out, fmt)
    compared = sum("skipped" not in d for d in report.data["drift"])
    _print(f"report of {len(runs)} run(s), {compared} drift comparison(s)")
    _print(f"wrote {out}")
    return 0


# -- guarantees: conformal prediction sets and selective answering ------------------------------
_GUARANTEE_FLAGS = {
    "conformal": ("alpha", "score", "randomized", "lam", "k_reg"),
    "selective": ("risk", "delta", "method", "grid_size", "pilot_fraction"),
}


def _check_guarantee_flags(args: argparse.Namespace) -> None:
    """Reject --alpha / --risk / … given to a kind that does not take them."""
    for kind, names in _GUARANTEE_FLAGS.items():
        if args.kind == kind:
            continue
        given = [n for n in names if getattr(args, n, None) not in (None, False)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} is an option of `llmcal fit {kind}`, not of {args.kind}")
    if args.kind in _GUARANTEE_FLAGS and (args.target or args.reference):
        raise ConfigError(
            f"llmcal fit {args.kind} takes one labelled calibration Scores file: llmcal fit "
            f"{args.kind} CAL.parquet --out {args.kind}.json (--target/--reference are for daca)"
        )


def _fit_guarantee(args: argparse.Namespace, out: Path) -> int:
    """`llmcal fit conformal|selective`: fit on a labelled calibration split, save the JSON."""
    from llmcal.calibrate import ConformalPredictor, SelectiveRisk

    if not args.scores:
        raise ConfigError(
            f"llmcal fit {args.kind} needs a labelled calibration Scores file: llmcal fit "
            f"{args.kind} CAL.parquet --out {args.kind}.json"
        )
    seed = 0 if args.seed is None else args.seed
    if args.kind == "conformal":
        g: Any = ConformalPredictor(
            alpha=0.1 if args.alpha is None else args.alpha,
            score=args.score or "lac",
            randomized=bool(args.randomized),
            lam=0.01 if args.lam is None else args.lam,
            k_reg=1 if args.k_reg is None else args.k_reg,
            seed=seed,
        )
    else:
        g = SelectiveRisk(
            risk=0.1 if args.risk is None else args.risk,
            delta=0.05 if args.delta is None else args.delta,
            method=(args.method or "fixed-sequence").replace("-", "_"),
            grid_size=200 if args.grid_size is None else args.grid_size,
            pilot_fraction=0.1 if args.pilot_fraction is None else args.pilot_fraction,
            seed=seed,
        )
    g.fit(_load_scores(args.scores, "fit"))
    g.save(out)
    info = g.fit_info_ or {}
    if args.kind == "conformal":
        q = g.get_params()["qhat"]
        _print(
            f"fitted conformal ({g.score}{', randomised' if g.randomized else ''}, alpha "
            f"{g.alpha:g}) on {info['n']} questions: q̂ = "
            f"{'inf (every set is all options)' if q is None else f'{q:.6g}'}; coverage >= "
            f"{info['target_coverage']:.4g} (and <= {info['coverage_upper_bound']:.4g} with "
            f"untied scores); mean set size on the calibration split "
            f"{info['calibration_mean_size']:.3f}"
        )
    else:
        head = (
            f"fitted selective ({g.method.replace('_', '-')}, risk {g.risk:g}, delta "
            f"{g.delta:g}) on {info['n']} questions"
        )
        if g.answers_nothing:
            _print(
                f"{head}: NO confidence threshold meets the bound, so the rule answers nothing; "
                "use more calibration questions, a larger --risk or --delta"
            )
        else:
            _print(
                f"{head}: answer when confidence >= {g.threshold:.6g}; on the calibration split "
                f"it answers {info['calibration_coverage']:.1%} with error rate "
                f"{info['calibration_risk']:.4f} (tested part: {info['n_errors']} errors in "
                f"{info['n_answered']}, Clopper–Pearson upper bound "
                f"{info['risk_upper_bound']:.4f} <= {g.risk:g})"
            )
    _print(f"wrote {out}")
    return 0


def _apply_guarantee(args: argparse.Namespace, out: Path) -> bool:
    """`llmcal apply` with a guarantee artefact: write prediction sets or decisions."""
    from llmcal.calibrate.guarantee import FORMAT, artefact_format, load_guarantee

    if artefact_format(args.calibrator) != FORMAT:
        return False
    g: Any = load_guarantee(args.calibrator)
    scores = _load_scores(args.scores, "apply it to")
    if g.kind == "conformal":
        sets = g.predict_sets(scores)
        sets.save(out)
        _print(f"prediction sets for {len(sets)} questions ({g.score}, alpha {g.alpha:g})")
        _print_sets_summary(sets)
    else:
        decisions = g.decide(scores)
        decisions.save(out)
        _print_selective_summary(decisions)
    _print(f"wrote {out}")
    return True


def _print_sets_summary(sets: Any, subjects: bool = True) -> dict[str, Any]:
    from llmcal.calibrate.conformal import set_coverage
    from llmcal.report.tables import render

    r = set_coverage(sets)
    target = r["target_coverage"]
    line = f"mean set size {r['mean_size']:.3f} · empty sets {r['empty_share']:.1%}"
    if "coverage" in r:
        lo, hi = r["coverage_ci"]
        line = (
            f"coverage {r['coverage']:.4f} [{lo:.4f}, {hi:.4f}] ({r['ci_method']}) on "
            f"{r['n_labelled']} labelled questions · target >= {target:.4g} · " + line
        )
        _print(line)
        _print(
            render(
                ["set size", "n", "share", "coverage"],
                [
                    [
                        str(b["size"]),
                        str(b["n"]),
                        f"{b['n'] / r['n_labelled']:.3f}",
                        f"{b['coverage']:.4f}",
                    ]
                    for b in r["by_size"]
                ],
            )
        )
        if subjects and r.get("by_subject"):
            _print()
            _print(
                render(
                    ["subject", "n", "coverage", "mean size"],
                    [
                        [k, str(v["n"]), f"{v['coverage']:.4f}", f"{v['mean_size']:.3f}"]
                        for k, v in r["by_subject"].items()
                    ],
                )
            )
    else:
        _print(f"{line} (unlabelled: no coverage)")
    return r


def _print_selective_summary(decisions: Any) -> dict[str, Any]:
    from llmcal.calibrate.selective_risk import selective_summary

    r = selective_summary(decisions)
    _print(f"guarantee: {r['guarantee']}")
    line = f"answered {r['n_answered']} of {r['n']} questions (coverage {r['coverage']:.4f})"
    if "realised_risk" in r:
        lo, hi = r["realised_risk_ci"]
        line += (
            f"; realised error rate among answered {r['realised_risk']:.4f} [{lo:.4f}, {hi:.4f}] "
            f"({r['ci_method']}; {r['n_errors']} errors in {r['n_answered_labelled']}) vs bound "
            f"{r['risk']:g}"
        )
    elif r["n_answered"] and "accuracy_all" not in r:
        line += "; unlabelled: no realised risk"
    _print(line)
    return r


def _eval_guarantee(args: argparse.Namespace, json_out: Path | None, plot_out: Path | None) -> bool:
    """`llmcal eval` of a prediction-sets or selective-decisions file (False: not one)."""
    from llmcal.calibrate.conformal import SETS_FORMAT, PredictionSets
    from llmcal.calibrate.guarantee import parquet_format
    from llmcal.calibrate.selective_risk import SELECTIVE_FORMAT, SelectiveDecisions

    fmt = parquet_format(args.scores)
    if fmt not in (SETS_FORMAT, SELECTIVE_FORMAT):
        return False
    if plot_out:
        raise ConfigError(f"--plot draws a reliability diagram of Scores; {args.scores} is {fmt}")
    meta: dict[str, Any]
    if fmt == SETS_FORMAT:
        sets = PredictionSets.load(args.scores)
        meta = sets.meta
        c = meta.get("conformal") or {}
        _print(
            f"{args.scores}: conformal prediction sets ({(c.get('config') or {}).get('score')}) · "
            f"model {meta.get('model', '?')} · task {meta.get('task', '?')}"
        )
        result = _print_sets_summary(sets, subjects=True)
    else:
        decisions = SelectiveDecisions.load(args.scores)
        meta = decisions.meta
        _print(
            f"{args.scores}: selective answering · model {meta.get('model', '?')} · task "
            f"{meta.get('task', '?')}"
        )
        result = _print_selective_summary(decisions)
    if json_out:
        payload = {"file": str(args.scores), "format": fmt, "meta": meta, "metrics": result}
        atomic_write_text(json_out, json.dumps(payload, indent=2) + "\n")
        _print(f"wrote {json_out}")
    return True


def _report_guarantees(args: argparse.Namespace, source: Any) -> dict[str, Any] | None:
    """`llmcal report --conformal CP.json --selective SEL.json`: checked on the last RUN."""
    if not (args.conformal or args.selective):
        return None
    from llmcal.calibrate import ConformalPredictor, SelectiveRisk
    from llmcal.report.guarantees import guarantees_data

    cp = ConformalPredictor.load(args.conformal) if args.conformal else None
    sel = SelectiveRisk.load(args.selective) if args.selective else None
    return guarantees_data(
        source.name, source.scores, cp, sel, conformal_file=args.conformal,
        selective_file=args.selective,
    )  # fmt: skip


def cmd_finetune(args: argparse.Namespace) -> int:
    """LoRA fine-tuning with a calibration-aware objective; writes a PEFT adapter folder."""
    from llmcal.finetune.command import check_adapter_out, config_from_args, run_finetune

    check_adapter_out(args.out)  # before loading any data or model
    config_from_args(args)
    summary = run_finetune(args, _load_task(args))
    if summary.get("rank", 0) == 0:  # one line per launch, not per torchrun process
        _print(f"wrote {summary['adapter']} ({summary['steps']} steps)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Score both bundled models on the synthetic task and compare their calibration."""
    from llmcal.demo import run_demo

    check_writable_dir(args.out_dir, f"--out-dir {quote(args.out_dir)}")  # before the models load
    run_demo(
        out_dir=Path(args.out_dir),
        n=args.n,
        seed=args.seed,
        batch_size=args.batch_size,
        freeform_n=args.freeform_n,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """List built-in tasks, templates and bundled models."""
    from llmcal.models import BUNDLED
    from llmcal.tasks import BUILTIN_TASKS, TEMPLATES

    _print("tasks:")
    for name, spec in BUILTIN_TASKS.items():
        _print(f"  {name:16s} {getattr(spec, 'description', '')}".rstrip())
    _print("  synthetic        generated arithmetic / comparison / ordering / unit questions")
    from llmcal.tasks import OPEN_TASKS

    _print("open-ended tasks (llmcal generate):")
    for name, open_spec in OPEN_TASKS.items():
        _print(f"  {name:16s} {open_spec.description}")
    _print("  synthetic-open   the synthetic families asked without options")
    _print("templates:")
    for name, t in TEMPLATES.items():
        kind = "chat" if t.chat else (f"{t.shots}-shot" if t.shots else "zero-shot")
        _print(f"  {name:16s} {kind}: {t.instruction[:70]}")
    _print("bundled models:")
    for alias, m in BUNDLED.items():
        _print(f"  {alias:22s} {m.role}: {m.description}")
    return 0


# -- free-form answers: generate, judge, confidence --------------------------------------------
def _judge_from_args(args: argparse.Namespace, answers: Any) -> Any:
    """Judge ``answers`` by --labels, --judge-endpoint or --matcher (in that order)."""
    from llmcal.judge import LLMJudge, judge_answers, labels_from_file

    if args.labels and args.judge_endpoint:
        raise ConfigError("give either --labels or --judge-endpoint, not both")
    if args.labels:
        return labels_from_file(answers, args.labels)
    if args.judge_endpoint:
        if not args.judge_model:
            raise ConfigError("--judge-endpoint needs --judge-model NAME (the served model)")
        judge = LLMJudge(
            args.judge_endpoint, args.judge_model, api_key_env=args.api_key_env, progress=False
        )
        return judge.judge(answers)
    if args.judge_model:
        raise ConfigError("--judge-model needs --judge-endpoint URL")
    return judge_answers(answers, args.matcher)


def _judged_line(answers: Any) -> str:
    judge = answers.meta.get("judge") or {}
    how = judge.get("matcher") or judge.get("model") or judge.get("file") or "?"
    known = int((answers.correct >= 0).sum())
    line = f"judged {known} of {len(answers)} answers ({judge.get('kind', '?')}: {how})"
    if known:
        line += f"; accuracy {answers.accuracy():.4f}"
    return line


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate free-form answers to an open-ended task, judge them, save Answers."""
    from llmcal.models.generate import (
        GenerationConfig,
        HFGenerator,
        HTTPGenerator,
        discard_checkpoint,
        generate_answers,
    )
    from llmcal.tasks import load_open_task

    out = _out_path(args.out, [".parquet"], "--out")
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature if not args.samples else 0.0,
        samples=args.samples or 0,
        sample_temperature=args.temperature if args.samples and args.temperature > 0 else 1.0,
        stop=tuple(args.stop or ()),
        stop_at_newline=not args.no_newline_stop,
        seed=args.seed,
        template=args.template,
    )
    task = load_open_task(args.task, data_dir=args.data_dir)
    shots: list[Any] = []
    if args.shots:
        shots, task = task.shots_split(args.shots, seed=args.seed)
    task = task.subset(args.limit, seed=None if args.no_shuffle else args.seed)
    generator: Any
    if args.endpoint:
        generator = HTTPGenerator(
            args.endpoint,
            args.model,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.retries,
            progress=False,
        )
    else:
        generator = HFGenerator.load(
            args.model,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            trust_remote_code=args.trust_remote_code,
            progress=False,
        )
    start = time.perf_counter()
    answers, counts = generate_answers(
        generator,
        task,
        config,
        shots=shots,
        out=out,
        chunk_size=args.chunk_size,
        resume=not args.restart,
        progress=None,
    )
    elapsed = time.perf_counter() - start
    answers = _judge_from_args(args, answers)
    answers = answers.replace(meta={"seconds": round(elapsed, 3)})
    answers.save(out)
    discard_checkpoint(out)
    n_tok = sum(len(t) for t in answers.token_logprobs)
    rate = counts["generated"] / elapsed if elapsed > 0 else 0.0
    line = f"generated {counts['generated']} answers in {elapsed:.1f}s ({rate:.2f} answers/s"
    line += f", {n_tok / elapsed:.1f} tokens/s)" if elapsed > 0 else ")"
    if counts["resumed"]:
        line += f", {counts['resumed']} resumed from the checkpoint"
    _print(line)
    _print(_judged_line(answers))
    _print(f"wrote {out}")
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    """Re-judge saved Answers with another matcher, an LLM judge or a label file."""
    from llmcal.answers import Answers

    out = _out_path(args.out, [".parquet"], "--out")
    answers = _judge_from_args(args, Answers.load(args.answers))
    answers.save(out)
    _print(_judged_line(answers))
    _print(f"wrote {out}")
    return 0


def cmd_confidence(args: argparse.Namespace) -> int:
    """Confidence of saved Answers by one method → answer-view Scores."""
    from llmcal.answers import Answers
    from llmcal.confidence import confidence

    out = _out_path(args.out, [".parquet"], "--out")
    answers = Answers.load(args.answers)
    scorer: Any = None
    generator: Any = None
    if args.method in ("ptrue", "verbal"):
        if not args.model:
            raise ConfigError(f"--method {args.method} needs --model (the model that judges)")
        if args.endpoint:
            from llmcal.models.generate import HTTPGenerator
            from llmcal.models.http import HTTPScorer

            if args.method == "ptrue":
                scorer = HTTPScorer(
                    args.endpoint, args.model, api_key_env=args.api_key_env, progress=False
                )
            else:
                generator = HTTPGenerator(
                    args.endpoint, args.model, api_key_env=args.api_key_env, progress=False
                )
        else:
            from llmcal.models.generate import HFGenerator

            generator = HFGenerator.load(
                args.model,
                device=args.device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                progress=False,
            )
            scorer = generator.scorer
    elif args.model or args.endpoint:
        raise ConfigError(f"--method {args.method} uses the saved answers only; drop --model")
    start = time.perf_counter()
    scores = confidence(
        args.method, answers, scorer=scorer, generator=generator, matcher=args.matcher
    )
    elapsed = time.perf_counter() - start
    scores = scores.replace(meta={"seconds": round(elapsed, 3)})
    scores.save(out)
    conf = scores.probs()[:, 1]
    line = (
        f"{args.method}: {len(scores)} answers in {elapsed:.1f}s; mean confidence {conf.mean():.4f}"
    )
    if answers.judged:
        line += f", accuracy {answers.accuracy():.4f}"
    info = scores.meta.get("confidence") or {}
    if "unparseable" in info:
        line += f"; {info['unparseable']} unparseable replies (confidence 0.5)"
    _print(line)
    _print(f"wrote {out}")
    return 0


def _add_device_options(g: Any) -> None:
    """--device and --dtype, as every command that loads a model in-process takes them."""
    g.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    g.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights dtype (auto: bfloat16 on a GPU that has it, else float32)",
    )


def _add_metric_options(p: Any) -> Any:
    """The binning and bootstrap options `eval` and `report` share; returns their group."""
    g = add_group(p, "metric")
    g.add_argument(
        "--bins",
        type=_bounded_int(1, MAX_BINS),
        default=15,
        help=f"number of ECE bins (1..{MAX_BINS})",
    )
    g.add_argument(
        "--binning",
        choices=["width", "mass"],
        default="width",
        help="equal-width or equal-mass ECE bins",
    )
    g.add_argument(
        "--resamples",
        type=_bounded_int(1, MAX_RESAMPLES),
        default=1000,
        help=f"bootstrap resamples (1..{MAX_RESAMPLES})",
    )
    g.add_argument("--seed", type=_seed, default=0, help="bootstrap seed")
    return g


def _add_judge_options(p: Any) -> None:
    g = add_group(p, "judging")
    g.add_argument(
        "--matcher",
        default="exact",
        help="exact, contains, f1[:T] or numeric (SQuAD-normalised)",
    )
    g.add_argument(
        "--judge-endpoint",
        action="append",
        default=None,
        metavar="URL",
        help="judge correctness with a served model instead of a matcher",
    )
    g.add_argument("--judge-model", default=None, help="model name served at --judge-endpoint")
    g.add_argument(
        "--labels", default=None, metavar="FILE", help="human grades: .csv/.jsonl with id,correct"
    )


def _add_endpoint_options(p: Any, endpoint_help: str | None, client: bool = False) -> Any:
    """The "endpoint" option group: --endpoint (when ``endpoint_help``), --api-key-env and, for
    commands that send many requests (``client``), --concurrency / --timeout / --retries."""
    g = add_group(p, "endpoint")
    if endpoint_help is not None:
        g.add_argument(
            "--endpoint", action="append", default=None, metavar="URL", help=endpoint_help
        )
    g.add_argument(
        "--api-key-env", default=None, metavar="VAR", help="environment variable with the API key"
    )
    if client:
        g.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight")
        g.add_argument(
            "--timeout",
            type=_finite_float(0, 3600, open_lo=True),
            default=30.0,
            help="seconds per request attempt",
        )
        g.add_argument(
            "--retries",
            type=_bounded_int(0, 100),
            default=5,
            help="retries per request (backoff+jitter)",
        )
    return g


def _add_freeform_parsers(sub: Any) -> None:
    from llmcal.confidence import METHODS

    p = _command(
        sub,
        "generate",
        help="free-form answers to an open-ended task → Answers (.parquet)",
        description="Greedy answers (or --temperature T), plus --samples N sampled ones; "
        "stops at a newline after some text, EOS, --stop strings or --max-new-tokens. Judged "
        "by --matcher, --judge-endpoint or --labels. Then: llmcal confidence.",
    )
    g = add_group(p, "model")
    g.add_argument("--model", required=True, help="bundled alias, .gguf, model dir, hub id")
    g.add_argument("--batch-size", type=_positive_int, default=8, help="answers per batch")
    _add_device_options(g)
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom model code from the hub"
    )
    g = add_group(p, "data")
    g.add_argument("--task", required=True, help="triviaqa, wikidata, synthetic-open or a .jsonl")
    g.add_argument("--data-dir", default=None, help="folder of canonical JSONL files")
    g.add_argument("--limit", type=_positive_int, default=None, help="answer at most N questions")
    g.add_argument("--seed", type=_seed, default=0, help="seed of shuffle, shots and sampling")
    g.add_argument("--no-shuffle", action="store_true", help="with --limit, take the first N")
    g = add_group(p, "prompt")
    g.add_argument("--template", choices=["qa", "chat"], default="qa", help="prompt format")
    g.add_argument(
        "--shots", type=_positive_int, default=None, help="few-shot examples from the task"
    )
    g = add_group(p, "generation")
    g.add_argument(
        "--max-new-tokens", type=_bounded_int(1, 4096), default=24, help="answer length cap"
    )
    g.add_argument(
        "--temperature",
        type=_finite_float(0, 100),
        default=0.0,
        help="0 = greedy; with --samples the temperature of the samples (default 1)",
    )
    g.add_argument(
        "--samples",
        type=_bounded_int(1, 1000),
        default=None,
        help="also sample N answers per question (for --method consistency)",
    )
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--no-newline-stop", action="store_true", help="do not stop at a newline")
    _add_judge_options(p)
    _add_endpoint_options(p, "generate through an OpenAI-compatible server", client=True)
    g = add_group(p, "checkpoint")
    g.add_argument("--chunk-size", type=_positive_int, default=32, help="answers per chunk")
    g.add_argument("--restart", action="store_true", help="discard the checkpoint beside --out")
    g = add_group(p, "output")
    g.add_argument("--out", required=True, metavar="FILE", help="output Answers file (.parquet)")
    p.set_defaults(func=cmd_generate)

    p = _command(
        sub,
        "judge",
        help="re-judge Answers (matcher, LLM judge or label file)",
        description="Judge saved Answers again: another --matcher, an LLM judge through "
        "--judge-endpoint, or human grades from --labels, joined by id.",
    )
    p.add_argument("answers", help="Answers file from llmcal generate")
    _add_judge_options(p)
    _add_endpoint_options(p, None)
    g = add_group(p, "output")
    g.add_argument("--out", required=True, metavar="FILE", help="output Answers file (.parquet)")
    p.set_defaults(func=cmd_judge)

    p = _command(
        sub,
        "confidence",
        help="confidence of Answers → answer-view Scores (.parquet)",
        description="ptrue (the --model judges each answer True/False), seqlik / seqlik-total "
        "(the answers' own token log-probs), verbal (--model states a probability), "
        "consistency (agreement of --samples with the answer). The output works with eval, "
        "fit, apply, report and fit daca.",
    )
    p.add_argument("answers", help="Answers file from llmcal generate")
    g = add_group(p, "method")
    g.add_argument("--method", choices=METHODS, required=True, help="confidence method")
    g.add_argument("--matcher", default="exact", help="consistency: how samples are compared")
    g = add_group(p, "model")
    g.add_argument("--model", default=None, help="ptrue / verbal: the model that judges")
    g.add_argument("--batch-size", type=_positive_int, default=8, help="answers per batch")
    _add_device_options(g)
    _add_endpoint_options(p, "ptrue / verbal through an OpenAI-compatible server")
    g = add_group(p, "output")
    g.add_argument("--out", required=True, metavar="FILE", help="output Scores file (.parquet)")
    p.set_defaults(func=cmd_confidence)


# -- parser -------------------------------------------------------------------------------------
class _IntermixedParser(Parser):
    """A subcommand parser whose optional positional may follow options (intermixed parsing)."""

    _inner = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser that shows defaults and hides old option aliases in --help."""
    from llmcal._cliutil import HelpFormatter

    parser: argparse.ArgumentParser = sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    from llmcal._cliutil import HelpFormatter, Parser, add_group, limit_type
    from llmcal.calibrate import CALIBRATORS
    from llmcal.models.base import MODES, NORMALIZATIONS
    from llmcal.tasks.templates import DEFAULT_TEMPLATE

    parser = Parser(
        prog="llmcal",
        description="Measure and repair the confidence calibration of LLMs.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"llmcal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "score",
        help="score a task with a model → Scores (.parquet)",
        description="Score every question of one or more tasks with a model (in-process, or "
        "through OpenAI-compatible endpoints) and save the option logits as Scores. Runs are "
        "checkpointed beside the output and resume when rerun.",
    )
    g = add_group(p, "model")
    g.add_argument(
        "--model", required=True, help="bundled alias, .gguf file, model directory or hub id"
    )
    g.add_argument("--adapter", default=None, help="PEFT adapter directory")
    g.add_argument("--batch-size", type=_positive_int, default=8, help="questions per forward pass")
    _add_device_options(g)
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom model code from the hub"
    )
    add_hf_loading(add_group(p, "model loading"))
    g = add_group(p, "data")
    g.add_argument(
        "--task",
        required=True,
        help="built-in task name, 'synthetic', or a data file; several comma-separated names "
        "with --out-dir",
    )
    g.add_argument(
        "--data-dir", default=None, help="folder of canonical JSONL files (or LLMCAL_DATA_DIR)"
    )
    g.add_argument(
        "--columns",
        default=None,
        help="column mapping for CSV/Parquet, e.g. question=q,choices=A|B|C|D,answer=label",
    )
    g.add_argument("--split", default=None, help="dataset split for hub datasets")
    g.add_argument(
        "--subject", action="append", default=None, help="keep only this subject (repeatable)"
    )
    g.add_argument(
        "--limit",
        type=limit_type,
        default=None,
        metavar="N",
        help="score at most N questions; 0 < N < 1 is a fraction of the task (as lm-eval)",
    )
    g.add_argument(
        "--seed", type=_seed, default=0, help="seed of the shuffle before --limit and of --shots"
    )
    g.add_argument(
        "--no-shuffle", action="store_true", help="with --limit, take the first N questions"
    )
    g = add_group(p, "prompt")
    g.add_argument(
        "--mode",
        choices=MODES,
        default="letter",
        help="letter: the answer letter's logits; cloze: each option's log-likelihood",
    )
    g.add_argument(
        "--normalization", choices=NORMALIZATIONS, default="mean", help="cloze length normalisation"
    )
    g.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="prompt template (see `llmcal list`)"
    )
    g.add_argument(
        "--shots",
        "--num_fewshot",
        type=_positive_int,
        default=None,
        metavar="N",
        help="few-shot examples taken from the task (--num_fewshot: lm-eval's spelling)",
    )
    g.add_argument(
        "--permutations",
        choices=["cyclic", "all"],
        default=None,
        help="CAPE: average over option orderings (letter mode)",
    )
    g.add_argument(
        "--permutation-cap", type=_positive_int, default=24, help="at most N orderings with 'all'"
    )
    g = _add_endpoint_options(
        p,
        "score through an OpenAI-compatible server (repeatable: load is spread); "
        "--model is then the served model name",
        client=True,
    )
    g.add_argument("--top-k", type=_positive_int, default=20, help="top log-probs to request")
    g = add_group(p, "checkpoint")
    g.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=32,
        help="questions per checkpointed chunk (part of the run's identity)",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint beside the output instead of resuming from it",
    )
    g = add_group(p, "output")
    out = g.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", default=None, metavar="FILE", help="output Scores file (.parquet)")
    out.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="output folder: one Scores file per --task, named TASK.parquet",
    )
    p.set_defaults(func=cmd_score)

    p = _command(
        sub,
        "eval",
        help="calibration metrics of a Scores file",
        description="Accuracy, ECE (with a bootstrap CI), Brier, NLL, AUROC and more for one "
        "labelled Scores file; optionally all metrics as JSON and a reliability diagram.",
    )
    p.add_argument("scores", help="Scores file (.parquet) from llmcal score")
    g = _add_metric_options(p)
    g.add_argument("--no-ci", action="store_true", help="skip the bootstrap confidence interval")
    g = add_group(p, "output")
    g.add_argument("--subjects", action="store_true", help="also print the per-subject table")
    g.add_argument(
        "--json", default=None, metavar="FILE", help="write all metrics to this .json file"
    )
    g.add_argument(
        "--plot", default=None, metavar="FILE", help="write a reliability diagram to this .png file"
    )
    g = add_group(p, "foreign table")
    g.add_argument(
        "--foreign",
        action="store_true",
        help="read a CSV / Parquet table of probabilities or logits not written by llmcal",
    )
    g.add_argument(
        "--columns",
        default=None,
        metavar="MAP",
        help="with --foreign: your column names, e.g. id=qid,label=gold,probs=p_a|p_b|p_c "
        "(fields: id, label, subject, n_options, probs, logits, confidence, correct)",
    )
    g.add_argument("--model", default=None, help="with --foreign: the model name to record")
    g.add_argument("--task", default=None, help="with --foreign: the task name to record")
    p.set_defaults(func=cmd_eval)

    default_class = sub._parser_class
    sub._parser_class = _IntermixedParser  # `fit KIND --alpha 0.1 CAL.parquet`: options first
    try:
        p = _command(
            sub,
            "fit",
            help="fit a calibrator on Scores → calibrator (.json)",
            description="Fit a calibrator on labelled Scores (DACA: on unlabelled Scores of a "
            "post-trained model against its pre-trained reference), or a guarantee (conformal "
            "prediction sets, selective answering with a risk bound), and save it as JSON.",
        )
    finally:
        sub._parser_class = default_class
    p.add_argument(
        "kind",
        choices=[*CALIBRATORS, "conformal", "selective"],
        help="calibrator kind, or a guarantee: conformal (prediction sets), selective (answer "
        "or abstain with a risk bound)",
    )
    p.add_argument("scores", nargs="?", default=None, help="labelled Scores file (not for daca)")
    g = add_group(p, "daca")
    g.add_argument("--target", default=None, help="daca: Scores of the post-trained model")
    g.add_argument("--reference", default=None, help="daca: Scores of the pre-trained reference")
    g.add_argument(
        "--scaler",
        choices=["temperature", "vector", "matrix"],
        default="temperature",
        help="daca: the map fitted to the reference",
    )
    g.add_argument(
        "--mask",
        choices=["agree", "none", "disagree"],
        default="agree",
        help="daca: which questions to fit on",
    )
    g.add_argument(
        "--parity",
        action="store_true",
        help="daca: the authors' Adam loop instead of the exact solver",
    )
    g.add_argument(
        "--align",
        choices=["exact", "inner"],
        default="exact",
        help="daca: require the same questions, or use the common ones",
    )
    g = add_group(p, "calibrator")
    g.add_argument(
        "--per-subject",
        action="store_true",
        help="daca: one τ per subject (the paper's MMLU protocol) → a daca-subject calibrator",
    )
    g.add_argument(
        "--no-agreement",
        choices=["fallback", "error"],
        default=None,
        help="daca: with no agreeing question keep τ = 1 or fail "
        "(default: fallback per subject, error otherwise)",
    )
    g.add_argument(
        "--unseen",
        choices=["pooled", "identity", "error"],
        default="pooled",
        help="daca --per-subject: τ for subjects not in the fit (pooled DACA τ, 1, or fail)",
    )
    g.add_argument(
        "--bins", type=_bounded_int(1, MAX_BINS), default=15, help="histogram: number of bins"
    )
    g = add_group(p, "cross-fitting")
    g.add_argument(
        "--cross-fit",
        type=_positive_int,
        default=None,
        metavar="K",
        help="k-fold cross-fitting (no separate cal split): K fold calibrators",
    )
    g.add_argument(
        "--oof",
        default=None,
        metavar="FILE",
        help="with --cross-fit: write the out-of-fold calibrated Scores",
    )
    g.add_argument(
        "--no-ensemble",
        action="store_true",
        help="with --cross-fit: new data get one calibrator refit on all rows, not the average",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the --cross-fit folds, or the conformal / selective hash (default 0)",
    )
    _add_guarantee_fit_options(p)
    g = add_group(p, "output")
    g.add_argument("--out", required=True, metavar="FILE", help="output calibrator file (.json)")
    p.set_defaults(func=cmd_fit)

    p = _command(
        sub,
        "apply",
        help="apply a calibrator to Scores → calibrated Scores (a conformal / selective "
        "artefact → prediction sets / answer-abstain decisions)",
        description="Apply a calibrator from llmcal fit to Scores; warns when the Scores come "
        "from another task, model, template or option count than the calibrator was fitted on. "
        "A conformal artefact writes prediction sets, a selective one answer/abstain decisions.",
    )
    p.add_argument("calibrator", help="calibrator or guarantee file (.json) from llmcal fit")
    p.add_argument("scores", help="Scores file (.parquet) to calibrate")
    g = add_group(p, "output")
    g.add_argument("--out", required=True, metavar="FILE", help="output Scores file (.parquet)")
    p.set_defaults(func=cmd_apply)

    p = _command(
        sub,
        "import",
        help="bring your own outputs: lm-eval samples or saved API responses → Scores",
        description="Import scores computed elsewhere, without re-scoring: lm-evaluation-"
        "harness --log_samples files of multiple-choice tasks, or saved OpenAI-compatible "
        "responses with top log-probs.",
    )
    kinds = p.add_subparsers(
        dest="source", required=True, metavar="SOURCE", help="where the outputs come from"
    )
    q = kinds.add_parser("lm-eval", help="lm-eval samples_<task>_<date>.jsonl → Scores")
    q.add_argument("samples", help="samples_<task>_<date>.jsonl written by lm-eval --log_samples")
    q.add_argument(
        "--results",
        default=None,
        help="the aggregated results_<date>.json (default: found beside the samples file)",
    )
    q.add_argument("--task-name", default=None, help="task name (default: from the file name)")
    q.add_argument(
        "--id-field",
        default="auto",
        help="doc field used as question id; auto = doc.id if distinct, else doc_id",
    )
    q.add_argument(
        "--normalization",
        choices=["sum", "acc_norm"],
        default="sum",
        help="sum = summed log-likelihood (lm-eval acc); acc_norm = per character (acc_norm)",
    )
    q.add_argument("--filter", default=None, help="lm-eval filter to read when there are several")
    q.add_argument("--out", required=True, help="output Scores file (.parquet)")
    q.set_defaults(func=cmd_import)
    q = kinds.add_parser(
        "openai",
        help="saved chat/completions responses with top log-probs (JSONL) → Scores",
        description='One JSON object per line: {"id": ..., "response": {raw response body}, '
        '"n_options": 4, "label": 2} (label / n_options may come from --task instead); OpenAI '
        "Batch API output lines are read as they are.",
    )
    q.add_argument("responses", help="JSONL file of saved responses")
    q.add_argument(
        "--task", default=None, help="task whose questions (by id) give labels and option counts"
    )
    q.add_argument("--data-dir", default=None, help="folder of canonical JSONL files")
    q.add_argument("--columns", default=None, help="column mapping for CSV/Parquet task files")
    q.add_argument("--split", default=None, help="dataset split for hub datasets")
    q.add_argument("--subject", action="append", default=None, help="keep only this subject")
    q.add_argument("--model", default=None, help="model name to record (default: from responses)")
    q.add_argument("--out", required=True, help="output Scores file (.parquet)")
    q.set_defaults(func=cmd_import)

    p = _command(
        sub,
        "split",
        help="seeded (stratified) split of a Scores file → DIR/NAME.parquet per split",
        description="Split the questions of a Scores file into disjoint parts, e.g. "
        "--fractions cal=0.3,test=0.7: fit a calibrator on one, measure it on the other. "
        "Stratified by subject when the Scores have subjects; all files or none are written.",
    )
    p.add_argument("scores", help="Scores file (.parquet)")
    p.add_argument(
        "--fractions", required=True, help="NAME=FRACTION pairs summing to 1, e.g. cal=0.3,test=0.7"
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the shuffle")
    p.add_argument(
        "--stratify",
        choices=["auto", "subject", "label", "none"],
        default="auto",
        help="keep each subject's (or label's) share in every split; auto = subject if present",
    )
    p.add_argument("--out-dir", required=True, help="folder for NAME.parquet files")
    p.set_defaults(func=cmd_split)

    p = _command(
        sub,
        "report",
        help="calibration report of Scores files → HTML, JSON or Markdown",
        description="Summary metrics with CIs, reliability diagrams, selective accuracy, "
        "per-subject tables, drift between runs and provenance, in one file. Each "
        "--calibrator is applied to the last RUN and added as a further run; drift compares "
        "each RUN with the one before it and each calibrated run with the RUN it came from.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="labelled Scores files (.parquet)")
    g = add_group(p, "run")
    g.add_argument(
        "--calibrator",
        action="append",
        default=None,
        metavar="CAL.json",
        help="apply this calibrator to the last RUN and add the result as a run (repeatable)",
    )
    g.add_argument(
        "--labels",
        default=None,
        help="comma-separated display names, one per run: the RUN files, then the calibrated runs",
    )
    g = add_group(p, "guarantees")
    g.add_argument(
        "--conformal",
        default=None,
        metavar="CP.json",
        help="add coverage of these conformal sets on the last RUN (from llmcal fit conformal)",
    )
    g.add_argument(
        "--selective",
        default=None,
        metavar="SEL.json",
        help="add this selective rule's risk and coverage on the last RUN (llmcal fit selective)",
    )
    g = _add_metric_options(p)
    g.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="drift: confidence changes up to this count as unchanged",
    )
    g.add_argument(
        "--min-subject-n",
        type=_positive_int,
        default=20,
        help="subject table: leave out subjects with fewer questions",
    )
    g = add_group(p, "output")
    g.add_argument(
        "--format",
        choices=["html", "json", "md"],
        default=None,
        help="output format (default: from the --out suffix)",
    )
    g.add_argument("--title", default="Calibration report", help="report title")
    g.add_argument("--out", required=True, metavar="FILE", help="output file (.html, .json or .md)")
    p.set_defaults(func=cmd_report)

    _add_finetune_parser(sub)
    _add_freeform_parsers(sub)

    p = _command(
        sub,
        "serve",
        help="OpenAI-compatible proxy that adds calibrated confidence (and abstention)",
        description="Passes requests through to --upstream; a /v1/completions or "
        '/v1/chat/completions body with an "llmcal" field {"question", "choices", '
        '"template"?, "context"?} gets an "llmcal" object: raw and calibrated option '
        "probabilities, the answer, the calibrated confidence and whether to abstain. "
        'Without "choices" ({"question", "answer"?}) the answer is free-form: the '
        "upstream's reply (or the given answer) gets a calibrated P(True) from a follow-up "
        "request (needs --freeform-calibrator).",
    )
    g = add_group(p, "upstream")
    g.add_argument(
        "--upstream",
        action="append",
        required=True,
        metavar="URL",
        help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1 (repeatable)",
    )
    g.add_argument(
        "--model", default=None, help="served model name (default: the upstream's first)"
    )
    g.add_argument(
        "--timeout",
        type=_finite_float(0, 3600, open_lo=True),
        default=30.0,
        help="seconds per upstream attempt",
    )
    g.add_argument(
        "--retries", type=_bounded_int(0, 100), default=2, help="retries per upstream request"
    )
    g.add_argument("--top-k", type=_positive_int, default=20, help="top log-probs to request")
    g.add_argument("--max-connections", type=_positive_int, default=64, help="upstream connections")
    g = add_group(p, "calibration")
    g.add_argument(
        "--calibrator",
        default=None,
        metavar="FILE",
        help="calibrator (.json from llmcal fit) for multiple-choice requests",
    )
    g.add_argument(
        "--selective",
        default=None,
        metavar="FILE",
        help="selective rule (.json from llmcal fit selective): abstain below its threshold",
    )
    g.add_argument(
        "--freeform-calibrator",
        default=None,
        metavar="FILE",
        help="calibrator fitted on P(True) Scores (llmcal confidence --method ptrue, then "
        "llmcal fit) for free-form requests",
    )
    g.add_argument(
        "--freeform-selective",
        default=None,
        metavar="FILE",
        help="selective rule for free-form answers (fit selective on P(True) Scores)",
    )
    g.add_argument(
        "--template", default=None, help="default template (default: the calibrator's, or daca1)"
    )
    g = add_group(p, "listen")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on")
    g.add_argument("--port", type=_bounded_int(1, 65535), default=8000, help="port to listen on")
    p.set_defaults(func=cmd_serve)

    p = _command(
        sub,
        "demo",
        help="score both bundled models on the synthetic task",
        description="Score both bundled models on the synthetic task, fit DACA and temperature "
        "scaling, and write the Scores, calibrators and a reliability diagram to one folder.",
    )
    p.add_argument(
        "--out-dir", default="llmcal-demo", metavar="DIR", help="where Scores and the diagram go"
    )
    p.add_argument(
        "--n", type=_bounded_int(1, 100_000), default=300, help="number of synthetic questions"
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic questions")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="questions per forward pass")
    p.add_argument(
        "--freeform-n",
        type=_bounded_int(0, 100_000),
        default=40,
        help="questions of the free-form (open-ended) section; 0 skips it",
    )
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "list", help="built-in tasks, templates and bundled models")
    p.set_defaults(func=cmd_list)
    return parser


def _add_guarantee_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conformal (prediction sets with coverage >= 1 - alpha)")
    g.add_argument(
        "--alpha",
        type=_finite_float(-1e6, 1e6),
        default=None,
        help="miscoverage level (default 0.1)",
    )
    g.add_argument("--score", choices=["lac", "aps", "raps"], default=None, help="default lac")
    g.add_argument(
        "--randomized", action="store_true", help="aps/raps: randomised tie-breaking (exact)"
    )
    g.add_argument(
        "--lam", type=_finite_float(0, 1e6), default=None, help="raps: size penalty (default 0.01)"
    )
    g.add_argument("--k-reg", type=int, default=None, help="raps: free set size (default 1)")
    g = p.add_argument_group("selective (answer when confident; error rate <= risk w.p. 1 - delta)")
    g.add_argument(
        "--risk", type=_finite_float(-1e6, 1e6), default=None, help="error-rate bound (default 0.1)"
    )
    g.add_argument(
        "--delta", type=_finite_float(-1e6, 1e6), default=None, help="failure probability (0.05)"
    )
    g.add_argument(
        "--method",
        choices=["fixed-sequence", "bonferroni"],
        default=None,
        help="multiple testing over the threshold grid (default fixed-sequence)",
    )
    g.add_argument("--grid-size", type=int, default=None, help="linear threshold grid (200)")
    g.add_argument(
        "--pilot-fraction",
        type=_finite_float(0, 1),
        default=None,
        help="fixed-sequence: share of the split that picks the start (default 0.1)",
    )


def _add_finetune_parser(sub: Any) -> None:
    from llmcal._cliutil import add_group, limit_type
    from llmcal.finetune.config import BASE_LOSSES, METHODS, PRESETS, SCHEDULERS
    from llmcal.tasks.templates import DEFAULT_TEMPLATE

    p = _command(
        sub,
        "finetune",
        help="calibration-aware LoRA fine-tuning (CogCalib, CFT, RCFT, …) → adapter folder",
        description="Seeded train / cal / test split of the task, LoRA fine-tuning on the "
        "Hugging Face Trainer (resumable with --resume), the adapter saved to --out-dir, and a "
        "before / after table on the test split. Score with `llmcal score --adapter DIR`. "
        "--preset sets the spec's settings by name; explicit options override them.",
    )
    g = add_group(p, "model")
    g.add_argument("--model", required=True, help="bundled alias, .gguf file, model dir, hub id")
    g.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_hf_loading(add_group(p, "model loading"))
    g = add_group(p, "data")
    g.add_argument("--task", required=True, help="built-in task name, 'synthetic', or a data file")
    g.add_argument("--data-dir", default=None, help="folder of canonical JSONL files")
    g.add_argument("--columns", default=None, help="column mapping for CSV/Parquet files")
    g.add_argument("--split", default=None, help="dataset split for hub datasets")
    g.add_argument("--subject", action="append", default=None, help="keep only this subject")
    g.add_argument(
        "--limit",
        type=limit_type,
        default=None,
        metavar="N",
        help="use at most N questions; 0 < N < 1 is a fraction of the task",
    )
    g.add_argument(
        "--cal-fraction",
        type=_fraction,
        default=None,
        help="calibration split (default .1 for cogcalib)",
    )
    g.add_argument("--test-fraction", type=_fraction, default=0.2, help="test split")
    g.add_argument(
        "--seed", type=_seed, default=None, help="seed of the split and the training (default 0)"
    )
    g.add_argument(
        "--template",
        default=None,
        help=f"zero-shot prompt template (default {DEFAULT_TEMPLATE}; cft = the CFT format)",
    )
    g.add_argument(
        "--letter-sep",
        choices=["auto", "bare", "space"],
        default=None,
        help="cft template: letter token 'A' or ' A' (auto: where the model puts more mass)",
    )
    g.add_argument(
        "--balance-letters",
        action="store_true",
        default=None,
        help="permute training options so each answer letter is equally frequent",
    )
    g.add_argument(
        "--mode",
        choices=["letter", "cloze"],
        default=None,
        help="letter: train the answer letter's logits (default); cloze: each option's "
        "log-likelihood, a softmax over the options (for models at chance in letter mode)",
    )
    g.add_argument(
        "--normalization",
        choices=["sum", "mean", "char"],
        default=None,
        help="cloze: divide each option's log-likelihood by 1, its tokens or its characters "
        "(default mean, as score --mode cloze)",
    )
    g = add_group(p, "method")
    g.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="the spec's settings by name; explicit options override them",
    )
    g.add_argument(
        "--method", choices=list(METHODS), default=None, help="training objective (default sft)"
    )
    g.add_argument("--loss", choices=BASE_LOSSES, default=None, help="override the base loss")
    g.add_argument(
        "--alpha",
        type=_finite_float(-1e6, 1e6),
        default=None,
        help="weight of the calibration term",
    )
    g.add_argument(
        "--margin", type=_finite_float(0, 1e6), default=None, help="MbLS margin (default 10)"
    )
    g.add_argument(
        "--style-steps",
        type=_bounded_int(0, 10**9),
        default=None,
        help="CogCalib: plain-CE steps first",
    )
    g.add_argument(
        "--refresh-every",
        type=_positive_int,
        default=None,
        help="CogCalib: refit t every N steps (default: each epoch or --refresh-max-steps)",
    )
    g.add_argument(
        "--refresh-max-steps",
        type=_positive_int,
        default=None,
        help="CogCalib default schedule: at most this many steps between refits (500)",
    )
    g.add_argument(
        "--gate-reference",
        choices=["current", "initial"],
        default=None,
        help="CogCalib: known labels on the cal split from the current or the initial model",
    )
    g.add_argument(
        "--ece-weighting",
        choices=["batch", "code"],
        default=None,
        help="RCFT: L_SFT + λ·batch-mean L_ECE, or the authors' (1−α)·L_SFT + α·1e-3·L_ECE",
    )
    g.add_argument(
        "--e-step-every",
        type=int,
        default=None,
        help="RCFT: steps between E-steps (default every epoch; 0 = once, as the code)",
    )
    g.add_argument(
        "--ece-only",
        action="store_true",
        default=None,
        help="RCFT ablation: train on the L_ECE term alone (no SFT term)",
    )
    g.add_argument(
        "--label-smoothing",
        type=_finite_float(0, 1),
        default=None,
        help="full-vocabulary ε on the completion / full-sequence SFT tokens",
    )
    g.add_argument(
        "--report-knowledge",
        action="store_true",
        help="label the training split known / maybe / weakly / unknown (SliCK) first",
    )
    g.add_argument(
        "--knowledge-prompts", type=_positive_int, default=10, help="SliCK: few-shot prompts"
    )
    g.add_argument("--knowledge-shots", type=int, default=4, help="SliCK: examples per prompt")
    g = add_group(p, "LoRA")
    g.add_argument("--lora-r", type=_positive_int, default=None, help="LoRA rank (default 8)")
    g.add_argument("--lora-alpha", type=_positive_int, default=None, help="default 2 × r")
    g.add_argument(
        "--lora-dropout", type=_finite_float(0, 1e6), default=None, help="LoRA dropout (default 0)"
    )
    g.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated module names (default q_proj,v_proj; all-linear for cft/rcft)",
    )
    g = add_group(p, "training")
    g.add_argument(
        "--lr",
        type=_finite_float(0, 10, open_lo=True),
        default=None,
        help="learning rate (default 1e-4)",
    )
    g.add_argument(
        "--weight-decay", type=_finite_float(0, 1e6), default=None, help="AdamW weight decay (0)"
    )
    g.add_argument("--adam-eps", type=float, default=None, help="AdamW epsilon (1e-8)")
    g.add_argument(
        "--scheduler", choices=list(SCHEDULERS), default=None, help="LR schedule (default linear)"
    )
    g.add_argument(
        "--warmup-ratio", type=_finite_float(0, 1e6), default=None, help="warm-up fraction (0.06)"
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="questions per device per step (default 8)",
    )
    g.add_argument(
        "--grad-accum", type=_positive_int, default=None, help="gradient accumulation (default 1)"
    )
    length = g.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=_finite_float(0, 1e6, open_lo=True),
        default=None,
        help="training epochs (default 1)",
    )
    length.add_argument(
        "--max-steps", type=_positive_int, default=None, help="stop after N optimizer steps"
    )
    g.add_argument("--max-length", type=_positive_int, default=None, help="truncate prompts")
    g = add_group(p, "checkpoint")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--save-steps", type=_positive_int, default=50, help="checkpoint every N steps")
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the Trainer checkpoints after the adapter is saved",
    )
    g = add_group(p, "evaluation")
    g.add_argument(
        "--no-eval", action="store_true", help="skip the before / after table on the test split"
    )
    g.add_argument(
        "--eval-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="evaluate before / after on at most N test questions (default: the whole split)",
    )
    g = add_group(p, "output")
    g.add_argument(
        "--out-dir",
        "--out",
        dest="out",
        required=True,
        metavar="DIR",
        help="adapter folder to write",
    )
    p.set_defaults(func=cmd_finetune)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcal`` console script."""
    from llmcal._cliutil import Parser, one_line_warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    Parser.argv, Parser.root = argv, parser
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is None and "LLMCAL_DATA_DIR" in os.environ:
        args.data_dir = os.environ["LLMCAL_DATA_DIR"]
    try:
        _check_paths(args)
        with one_line_warnings():
            return int(args.func(args))
    except LLMCalError as exc:
        print(f"llmcal: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmcal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
