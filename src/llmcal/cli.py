"""The ``llmcal`` command line: score, eval, fit, apply, report, finetune, demo and list.

Every user error is an ``LLMCalError``: the CLI prints one line ``llmcal: error: …`` and exits 2,
without a traceback. Outputs are written atomically, so a failed command leaves no half-written
file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmcal._io import atomic_write_text
from llmcal._version import __version__
from llmcal.errors import ConfigError, LLMCalError

EXIT_USAGE = 2


# -- helpers ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _out_path(path: str, suffixes: Sequence[str], flag: str) -> Path:
    """Check an output path before any expensive work: right suffix, writable folder."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {path!r}: expected a {' or '.join(suffixes)} file")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: {parent} is not a directory")
    if out.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give a file name")
    return out


def _load_task(args: argparse.Namespace) -> Any:
    from llmcal.tasks import load_task

    kwargs: dict[str, Any] = {}
    if getattr(args, "columns", None):
        from llmcal.tasks import parse_mapping

        kwargs["mapping"] = parse_mapping(args.columns)
    if getattr(args, "split", None):
        kwargs["split"] = args.split
    task = load_task(args.task, data_dir=args.data_dir, **kwargs)
    if args.subject:
        task = task.filter(args.subject)
        if not len(task):
            raise ConfigError(f"task {args.task!r} has no questions of subject(s) {args.subject}")
    return task


def _print(*parts: Any) -> None:
    print(*parts, flush=True)


# -- commands -----------------------------------------------------------------------------------
def cmd_score(args: argparse.Namespace) -> int:
    """Score a task with a model (in-process or through endpoints) and save the Scores."""
    from llmcal.models.checkpoint import CheckpointedScorer
    from llmcal.tasks import fewshot_split, get_template

    out = _out_path(args.out, [".parquet"], "--out")
    task = _load_task(args)
    template = get_template(args.template)
    shots: list[Any] = []
    if args.shots:
        if template.chat or args.mode != "letter":
            raise ConfigError("--shots works with plain letter-mode templates (e.g. daca1)")
        shots, task = fewshot_split(task, args.shots, seed=args.seed)
        template = get_template(f"fewshot-{args.shots}")
    task = task.subset(args.limit, seed=None if args.no_shuffle else args.seed)
    scorer = _score_backend(args, template)
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
    return 0


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
    from llmcal.scores import Scores

    json_out = _out_path(args.json, [".json"], "--json") if args.json else None
    plot_out = _out_path(args.plot, [".png"], "--plot") if args.plot else None
    scores = Scores.load(args.scores)
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


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a calibrator on Scores and save it as a JSON artefact."""
    from llmcal.calibrate import CALIBRATORS, DACA
    from llmcal.scores import Scores

    out = _out_path(args.out, [".json"], "--out")
    if args.kind == "daca":
        if args.scores or not (args.target and args.reference):
            raise ConfigError(
                "llmcal fit daca takes --target POLM.parquet --reference PLM.parquet (no positional file)"
            )
        cal: Any = DACA(scaler=args.scaler, mask=args.mask, parity=args.parity, align=args.align)
        cal.fit(target=Scores.load(args.target), reference=Scores.load(args.reference))
    else:
        if not args.scores or args.target or args.reference:
            raise ConfigError(
                f"llmcal fit {args.kind} takes one labelled Scores file: llmcal fit {args.kind} "
                "RUN.parquet --out cal.json (--target/--reference are for daca)"
            )
        options = {"n_bins": args.bins} if args.kind == "histogram" else {}
        cal = CALIBRATORS[args.kind](**options).fit(Scores.load(args.scores))
    cal.save(out)
    params = cal.get_params()
    shown = {k: v for k, v in params.items() if not isinstance(v, list) or len(v) <= 8}
    info = cal.fit_info_ or {}
    _print(f"fitted {args.kind} on {info.get('n_used', info.get('n'))} questions: {shown}")
    _print(f"wrote {out}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply a saved calibrator to Scores and save the calibrated Scores."""
    from llmcal.calibrate import load_calibrator
    from llmcal.scores import Scores

    out = _out_path(args.out, [".parquet"], "--out")
    cal = load_calibrator(args.calibrator)
    scores = Scores.load(args.scores)
    calibrated = cal.transform(scores)
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
    from llmcal.report.data import FORMATS, ReportRun, build_report, format_for_path
    from llmcal.scores import Scores

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
        scores = Scores.load(path)
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
    )
    report.save(out, fmt)
    compared = sum("skipped" not in d for d in report.data["drift"])
    _print(f"report of {len(runs)} run(s), {compared} drift comparison(s)")
    _print(f"wrote {out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """LoRA fine-tuning with a calibration-aware objective; writes a PEFT adapter folder."""
    from llmcal.finetune.command import check_adapter_out, config_from_args, run_finetune

    check_adapter_out(args.out)  # before loading any data or model
    config_from_args(args)
    summary = run_finetune(args, _load_task(args))
    _print(f"wrote {summary['adapter']} ({summary['steps']} steps)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Score both bundled models on the synthetic task and compare their calibration."""
    from llmcal.demo import run_demo

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


def _add_judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--matcher",
        default="exact",
        help="exact, contains, f1[:T] or numeric (SQuAD-normalised; default exact)",
    )
    p.add_argument("--judge-endpoint", action="append", default=None, metavar="URL",
                   help="judge correctness with a served model instead of a matcher")  # fmt: skip
    p.add_argument("--judge-model", default=None, help="model name served at --judge-endpoint")
    p.add_argument("--labels", default=None, help="human grades: .csv/.jsonl with id,correct")


def _add_freeform_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="free-form answers to an open-ended task → Answers (.parquet)",
        description="Greedy answers (or --temperature T), plus --samples N sampled ones; "
        "stops at a newline after some text, EOS, --stop strings or --max-new-tokens. Judged "
        "by --matcher, --judge-endpoint or --labels. Then: llmcal confidence.",
    )
    p.add_argument("--model", required=True, help="bundled alias, .gguf, model dir, hub id")
    p.add_argument("--task", required=True, help="triviaqa, wikidata, synthetic-open or a .jsonl")
    p.add_argument("--data-dir", default=None, help="folder of canonical JSONL files")
    p.add_argument("--template", choices=["qa", "chat"], default="qa")
    p.add_argument(
        "--shots", type=_positive_int, default=None, help="few-shot examples from the task"
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="answer at most N questions")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffle, shots and sampling")
    p.add_argument("--no-shuffle", action="store_true", help="with --limit, take the first N")
    p.add_argument("--max-new-tokens", type=_positive_int, default=24)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy; with --samples the temperature of the samples (default 1)")  # fmt: skip
    p.add_argument("--samples", type=_positive_int, default=None,
                   help="also sample N answers per question (for --method consistency)")  # fmt: skip
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--no-newline-stop", action="store_true", help="do not stop at a newline")
    _add_judge_options(p)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--endpoint", action="append", default=None, metavar="URL",
                   help="generate through an OpenAI-compatible server")  # fmt: skip
    p.add_argument("--api-key-env", default=None, metavar="VAR")
    p.add_argument("--concurrency", type=_positive_int, default=4)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--chunk-size", type=_positive_int, default=32)
    p.add_argument("--restart", action="store_true", help="discard the checkpoint beside --out")
    p.add_argument("--out", required=True, help="output Answers file (.parquet)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="re-judge Answers (matcher, LLM judge or label file)")
    p.add_argument("answers", help="Answers file from llmcal generate")
    _add_judge_options(p)
    p.add_argument("--api-key-env", default=None, metavar="VAR")
    p.add_argument("--out", required=True, help="output Answers file (.parquet)")
    p.set_defaults(func=cmd_judge)

    from llmcal.confidence import METHODS

    p = sub.add_parser(
        "confidence",
        help="confidence of Answers → answer-view Scores (.parquet)",
        description="ptrue (the --model judges each answer True/False), seqlik / seqlik-total "
        "(the answers' own token log-probs), verbal (--model states a probability), "
        "consistency (agreement of --samples with the answer). The output works with eval, "
        "fit, apply, report and fit daca.",
    )
    p.add_argument("answers", help="Answers file from llmcal generate")
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--model", default=None, help="ptrue / verbal: the model that judges")
    p.add_argument("--endpoint", action="append", default=None, metavar="URL")
    p.add_argument("--api-key-env", default=None, metavar="VAR")
    p.add_argument("--matcher", default="exact", help="consistency: how samples are compared")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--out", required=True, help="output Scores file (.parquet)")
    p.set_defaults(func=cmd_confidence)


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every subcommand."""
    from llmcal.calibrate import CALIBRATORS
    from llmcal.models.base import MODES, NORMALIZATIONS
    from llmcal.tasks.templates import DEFAULT_TEMPLATE

    parser = argparse.ArgumentParser(
        prog="llmcal", description="Measure and repair the confidence calibration of LLMs."
    )
    parser.add_argument("--version", action="version", version=f"llmcal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score a task with a model → Scores (.parquet)")
    p.add_argument(
        "--model", required=True, help="bundled alias, .gguf file, model directory or hub id"
    )
    p.add_argument("--task", required=True, help="built-in task name, 'synthetic', or a data file")
    p.add_argument(
        "--data-dir", default=None, help="folder of canonical JSONL files (or LLMCAL_DATA_DIR)"
    )
    p.add_argument(
        "--columns",
        default=None,
        help="column mapping for CSV/Parquet, e.g. question=q,choices=A|B|C|D,answer=label",
    )
    p.add_argument("--split", default=None, help="dataset split for hub datasets")
    p.add_argument(
        "--subject", action="append", default=None, help="keep only this subject (repeatable)"
    )
    p.add_argument("--mode", choices=MODES, default="letter")
    p.add_argument(
        "--normalization", choices=NORMALIZATIONS, default="mean", help="cloze length normalisation"
    )
    p.add_argument(
        "--template", default=DEFAULT_TEMPLATE, help="prompt template (see `llmcal list`)"
    )
    p.add_argument(
        "--shots", type=_positive_int, default=None, help="few-shot examples taken from the task"
    )
    p.add_argument("--limit", type=_positive_int, default=None, help="score at most N questions")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the shuffle before --limit and of --shots"
    )
    p.add_argument(
        "--no-shuffle", action="store_true", help="with --limit, take the first N questions"
    )
    p.add_argument("--adapter", default=None, help="PEFT adapter directory")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom model code from the hub"
    )
    p.add_argument(
        "--permutations",
        choices=["cyclic", "all"],
        default=None,
        help="CAPE: average over option orderings (letter mode)",
    )
    p.add_argument(
        "--permutation-cap", type=_positive_int, default=24, help="at most N orderings with 'all'"
    )
    p.add_argument(
        "--endpoint",
        action="append",
        default=None,
        metavar="URL",
        help="score through an OpenAI-compatible server (repeatable: load is spread); "
        "--model is then the served model name",
    )
    p.add_argument(
        "--api-key-env", default=None, metavar="VAR", help="environment variable with the API key"
    )
    p.add_argument("--concurrency", type=_positive_int, default=4, help="requests in flight")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request attempt")
    p.add_argument("--retries", type=int, default=5, help="retries per request (backoff+jitter)")
    p.add_argument("--top-k", type=_positive_int, default=20, help="top log-probs to request")
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=32,
        help="questions per checkpointed chunk (part of the run's identity)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint beside --out instead of resuming from it",
    )
    p.add_argument("--out", required=True, help="output Scores file (.parquet)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("eval", help="calibration metrics of a Scores file")
    p.add_argument("scores", help="Scores file (.parquet) from llmcal score")
    p.add_argument("--bins", type=_positive_int, default=15)
    p.add_argument("--binning", choices=["width", "mass"], default="width")
    p.add_argument("--no-ci", action="store_true", help="skip the bootstrap confidence interval")
    p.add_argument("--resamples", type=_positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--subjects", action="store_true", help="also print the per-subject table")
    p.add_argument("--json", default=None, help="write all metrics to this .json file")
    p.add_argument("--plot", default=None, help="write a reliability diagram to this .png file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fit", help="fit a calibrator on Scores → calibrator (.json)")
    p.add_argument("kind", choices=list(CALIBRATORS), help="calibrator kind")
    p.add_argument("scores", nargs="?", default=None, help="labelled Scores file (not for daca)")
    p.add_argument("--target", default=None, help="daca: Scores of the post-trained model")
    p.add_argument("--reference", default=None, help="daca: Scores of the pre-trained reference")
    p.add_argument("--scaler", choices=["temperature", "vector", "matrix"], default="temperature")
    p.add_argument(
        "--mask",
        choices=["agree", "none", "disagree"],
        default="agree",
        help="daca: which questions to fit on",
    )
    p.add_argument(
        "--parity",
        action="store_true",
        help="daca: the authors' Adam loop instead of the exact solver",
    )
    p.add_argument(
        "--align",
        choices=["exact", "inner"],
        default="exact",
        help="daca: require the same questions, or use the common ones",
    )
    p.add_argument("--bins", type=_positive_int, default=15, help="histogram: number of bins")
    p.add_argument("--out", required=True, help="output calibrator file (.json)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("apply", help="apply a calibrator to Scores → calibrated Scores")
    p.add_argument("calibrator", help="calibrator file (.json) from llmcal fit")
    p.add_argument("scores", help="Scores file (.parquet) to calibrate")
    p.add_argument("--out", required=True, help="output Scores file (.parquet)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "report",
        help="calibration report of Scores files → HTML, JSON or Markdown",
        description="Summary metrics with CIs, reliability diagrams, selective accuracy, "
        "per-subject tables, drift between runs and provenance, in one file. Each "
        "--calibrator is applied to the last RUN and added as a further run; drift compares "
        "each RUN with the one before it and each calibrated run with the RUN it came from.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="labelled Scores files (.parquet)")
    p.add_argument(
        "--calibrator",
        action="append",
        default=None,
        metavar="CAL.json",
        help="apply this calibrator to the last RUN and add the result as a run (repeatable)",
    )
    p.add_argument(
        "--labels",
        default=None,
        help="comma-separated display names, one per run: the RUN files, then the calibrated runs",
    )
    p.add_argument(
        "--format",
        choices=["html", "json", "md"],
        default=None,
        help="output format (default: from the --out suffix)",
    )
    p.add_argument("--title", default="Calibration report", help="report title")
    p.add_argument("--bins", type=_positive_int, default=15)
    p.add_argument("--binning", choices=["width", "mass"], default="width")
    p.add_argument("--resamples", type=_positive_int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="drift: confidence changes up to this count as unchanged",
    )
    p.add_argument("--out", required=True, help="output file (.html, .json or .md)")
    p.set_defaults(func=cmd_report)

    _add_finetune_parser(sub)
    _add_freeform_parsers(sub)

    p = sub.add_parser("demo", help="score both bundled models on the synthetic task")
    p.add_argument("--out-dir", default="llmcal-demo", help="where Scores and the diagram go")
    p.add_argument("--n", type=_positive_int, default=300, help="number of synthetic questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument(
        "--freeform-n",
        type=int,
        default=40,
        help="questions of the free-form (open-ended) section; 0 skips it",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="built-in tasks, templates and bundled models")
    p.set_defaults(func=cmd_list)
    return parser


def _add_finetune_parser(sub: Any) -> None:
    from llmcal.finetune.config import BASE_LOSSES, METHODS
    from llmcal.tasks.templates import DEFAULT_TEMPLATE

    p = sub.add_parser(
        "finetune",
        help="calibration-aware LoRA fine-tuning (CogCalib, CFT, RCFT, …) → adapter folder",
        description="Seeded train / cal / test split of the task, LoRA fine-tuning on the "
        "Hugging Face Trainer (resumable with --resume), the adapter saved to --out, and a "
        "before / after table on the test split. Score with `llmcal score --adapter OUT`.",
    )
    p.add_argument("--model", required=True, help="bundled alias, .gguf file, model dir, hub id")
    p.add_argument("--task", required=True, help="built-in task name, 'synthetic', or a data file")
    p.add_argument("--data-dir", default=None, help="folder of canonical JSONL files")
    p.add_argument("--columns", default=None, help="column mapping for CSV/Parquet files")
    p.add_argument("--split", default=None, help="dataset split for hub datasets")
    p.add_argument("--subject", action="append", default=None, help="keep only this subject")
    p.add_argument("--method", choices=list(METHODS), default="sft")
    p.add_argument("--loss", choices=BASE_LOSSES, default=None, help="override the base loss")
    p.add_argument("--alpha", type=float, default=None, help="weight of the calibration term")
    p.add_argument("--margin", type=float, default=10.0, help="MbLS margin")
    p.add_argument("--style-steps", type=int, default=None, help="CogCalib plain-CE steps first")
    p.add_argument("--refresh-every", type=_positive_int, default=None, help="threshold refresh")
    p.add_argument("--lora-r", type=_positive_int, default=8)
    p.add_argument("--lora-alpha", type=_positive_int, default=None, help="default 2 × r")
    p.add_argument("--lora-targets", default=None, help="comma-separated module names")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--grad-accum", type=_positive_int, default=1)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help="default 1")
    length.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--max-length", type=_positive_int, default=None, help="truncate prompts")
    p.add_argument(
        "--balance-letters",
        action="store_true",
        help="permute training options so each answer letter is equally frequent",
    )
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="zero-shot prompt template")
    p.add_argument("--limit", type=_positive_int, default=None, help="use at most N questions")
    p.add_argument("--cal-fraction", type=float, default=None, help="default .1 for cogcalib")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--save-steps", type=_positive_int, default=50, help="checkpoint interval")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="skip the before / after table")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.set_defaults(func=cmd_finetune)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcal`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is None and "LLMCAL_DATA_DIR" in os.environ:
        args.data_dir = os.environ["LLMCAL_DATA_DIR"]
    try:
        return int(args.func(args))
    except LLMCalError as exc:
        print(f"llmcal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmcal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
