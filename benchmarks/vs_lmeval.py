"""llmcal's HFScorer vs lm-evaluation-harness on the same weights, prompts and questions.

Both tools load the bundled SmolLM2-135M-Instruct from the one transformers directory llmcal
converts its GGUF file into, and score the same seeded MMLU subset:

* letter: llmcal's ``daca1`` letter prompt, options " A" … " D" (lm-eval: ``multiple_choice``
  with the letters as choices after the same prompt);
* cloze: llmcal's cloze context and option continuations, summed log-likelihood (lm-eval:
  ``multiple_choice`` with the option texts, ``target_delimiter: ""``).

lm-eval reads the questions from ../shared/data through a task YAML (``dataset_path: json``)
generated into a temporary folder together with a ``utils.py`` that keeps the subset and looks
up the prompt text llmcal renders, so both sides see identical strings.

``--shots 5``: MMLU's five-shot protocol, each subject's first five dev-set questions as the
examples. llmcal scores with ``score_by_subject`` (template ``fewshot-5``, the subject's shared
instruction + examples run once, its KV cache reused); lm-eval builds the same prompts itself
with ``num_fewshot: 5`` (one task per subject, ``fewshot_split: dev``, sampler ``first_n``,
``description`` = the instruction, each example = its question block, the target delimiter and
its answer, then ``"\n\n"``). The questions are ``--subjects`` seeded subjects with ``n /
subjects`` seeded questions each (a real run scores every question of a subject, so this
understates the reuse). Every lm-eval context is checked to equal llmcal's prompt.

Each side runs in its own child process, one after the other (peak RSS per side), at the same
batch size and thread count; model loading is excluded from the times. Times are process CPU
seconds (``time.process_time``), which, with one torch thread per side, do not depend on what
else the shared machine runs; wall times are recorded too. The "forward" time is measured with
hooks on the model inside each run: the CPU time spent in the model's forward calls, so
``total / forward - 1`` is each tool's overhead over the bare batched forward passes it makes. Agreement: identical argmax, and per-option log-probs within 1e-4 (letter: llmcal
stores the raw option logits, lm-eval full-vocabulary log-probs, which differ by one constant
per row, so both are centred per row before comparing).

Usage: python benchmarks/vs_lmeval.py [--n 1000] [--batch-size 8] [--threads 1]
       python benchmarks/vs_lmeval.py --shots 5 --n 200 --subjects 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import DATA_DIR, RESULTS, md_table, write_results

TASK_FILE = "mmlu_test.jsonl"
MODES = ("letter", "cloze")


def main() -> None:
    """Prepare the shared inputs, run both sides in child processes and compare."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shots", type=int, choices=[0, 5], default=0)
    ap.add_argument("--subjects", type=int, default=4, help="subjects sampled with --shots 5")
    ap.add_argument(
        "--max-shot-chars",
        type=int,
        default=None,
        help="with --shots 5: sample only subjects whose five examples have at most this many "
        "characters (the long-passage history subjects are slow for lm-eval on a CPU)",
    )
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: letter,cloze")
    ap.add_argument("--side", choices=["llmcal", "lm-eval"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument(
        "--rerender",
        action="store_true",
        help="with --shots 5: rewrite vs_lmeval_5shot.md from its JSON (no scoring)",
    )
    args = ap.parse_args()
    if args.side:
        _child(args)
        return
    if args.rerender:
        # the JSON's own environment wins over the one write_results reads now
        payload = json.loads((RESULTS / "vs_lmeval_5shot.json").read_text())
        args.batch_size, args.threads = payload["batch_size"], payload["threads"]
        results: dict[str, Any] = {"lm-eval": {}}
        _report_fewshot(payload, results, args, payload["runs"], payload["memory"], payload)
        return
    with tempfile.TemporaryDirectory(prefix="llmcal-vs-lmeval-") as tmp:
        work = Path(tmp)
        info = _prepare_fewshot(work, args) if args.shots else _prepare(work, args.n)
        results = {}
        for side in ("llmcal", "lm-eval"):
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work),
                   "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--modes", args.modes]  # fmt: skip
            print(f"running {side} …", flush=True)
            subprocess.run(cmd, check=True)
            results[side] = json.loads((work / f"{side}.json").read_text())
    _report(info, results, args)


# -- shared inputs -------------------------------------------------------------------------------
def _prepare(work: Path, n: int) -> dict[str, Any]:
    """The converted model directory, the seeded subset and the prompt text of each question."""
    from llmcal.models import ALIGNED_MODEL, HFScorer
    from llmcal.models.hf import converted_dir
    from llmcal.tasks import get_template, load_task

    scorer = HFScorer(ALIGNED_MODEL, progress=False)  # converts the GGUF once (cached)
    model_dir = converted_dir(Path(scorer.source.location))
    task = load_task("mmlu", data_dir=DATA_DIR).subset(n, seed=0)
    tmpl = get_template("daca1")
    prompts = {}
    for q in task:
        context, conts = tmpl.cloze(q)
        prompts[q.id] = {"letter": tmpl.letter_prompt(q), "context": context, "conts": conts}
    (work / "prompts.json").write_text(json.dumps(prompts))
    (work / "ids.json").write_text(json.dumps(task.ids))
    _write_lmeval_tasks(work)
    info = {"model_dir": str(model_dir), "n": len(task), "task": "mmlu", "seed": 0}
    (work / "info.json").write_text(json.dumps(info))
    return info


def _write_lmeval_tasks(work: Path) -> None:
    """lm-eval task YAMLs over ../shared/data and the utils.py they call."""
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(
        textwrap.dedent(
            f"""
            import json
            PROMPTS = json.load(open({str(work / "prompts.json")!r}))
            def process_docs(ds):
                return ds.filter(lambda d: d["id"] in PROMPTS)
            def letter_text(d):
                return PROMPTS[d["id"]]["letter"]
            def letter_choices(d):
                return ["A", "B", "C", "D", "E", "F", "G", "H"][: len(d["choices"])]
            def cloze_text(d):
                return PROMPTS[d["id"]]["context"]
            def cloze_choices(d):
                return PROMPTS[d["id"]]["conts"]
            """
        )
    )
    data = (Path(DATA_DIR) / TASK_FILE).resolve()
    for mode, delim in (("letter", " "), ("cloze", "")):
        (tasks / f"llmcal_{mode}.yaml").write_text(
            textwrap.dedent(
                f"""
                task: llmcal_mmlu_{mode}
                dataset_path: json
                dataset_kwargs:
                  data_files: {data}
                test_split: train
                output_type: multiple_choice
                process_docs: !function utils.process_docs
                doc_to_text: !function utils.{mode}_text
                doc_to_choice: !function utils.{mode}_choices
                doc_to_target: answer
                target_delimiter: "{delim}"
                metric_list:
                  - metric: acc
                """
            )
        )


def _prepare_fewshot(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Five-shot inputs: seeded subjects and questions, their dev shots and every prompt."""
    from llmcal.models import ALIGNED_MODEL, HFScorer
    from llmcal.models.hf import converted_dir
    from llmcal.tasks import get_template, load_task, subject_shots

    scorer = HFScorer(ALIGNED_MODEL, progress=False)
    model_dir = converted_dir(Path(scorer.source.location))
    test = load_task("mmlu", data_dir=DATA_DIR)
    per = args.n // args.subjects
    counts: dict[str, int] = {}
    for q in test:
        counts[str(q.subject)] = counts.get(str(q.subject), 0) + 1
    shots = subject_shots(load_task("mmlu_dev", data_dir=DATA_DIR), k=args.shots)
    zero, tmpl = get_template("daca1"), get_template(f"fewshot-{args.shots}")

    def shot_chars(subject: str) -> int:
        return sum(len(zero.question_block(q)) for q in shots.get(subject, []))

    pool = sorted(
        s
        for s, c in counts.items()
        if c >= per and (args.max_shot_chars is None or shot_chars(s) <= args.max_shot_chars)
    )
    picked = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[: args.subjects]]
    questions = [q for s in sorted(picked) for q in test.filter(s).subset(per, seed=0)]
    prompts = {}
    for q in questions:
        s = shots[str(q.subject)]
        context, conts = zero.cloze(q)
        full_ctx, _ = tmpl.cloze(q, s)
        prompts[q.id] = {"block": zero.question_block(q), "context": context, "conts": conts,
                         "full_letter": tmpl.letter_prompt(q, s), "full_cloze": full_ctx}  # fmt: skip
    for s in picked:
        for q in shots[s]:
            context, conts = zero.cloze(q)
            prompts[q.id] = {"block": zero.question_block(q), "context": context, "conts": conts}
    (work / "prompts.json").write_text(json.dumps(prompts))
    (work / "ids.json").write_text(json.dumps([q.id for q in questions]))
    _write_lmeval_fewshot_tasks(work, sorted(picked), args.shots, tmpl.instruction)
    info = {"model_dir": str(model_dir), "n": len(questions), "task": "mmlu", "seed": 0,
            "shots": args.shots, "subjects": sorted(picked), "per_subject": per,
            "max_shot_chars": args.max_shot_chars,
            "shot_chars": {s: shot_chars(s) for s in sorted(picked)}}  # fmt: skip
    (work / "info.json").write_text(json.dumps(info))
    return info


def _write_lmeval_fewshot_tasks(
    work: Path, subjects: list[str], shots: int, instruction: str
) -> None:
    """One lm-eval task per subject and mode with ``num_fewshot`` dev-set examples."""
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(
        textwrap.dedent(
            f"""
            import json
            PROMPTS = json.load(open({str(work / "prompts.json")!r}))
            def _keep(subject):
                return lambda ds: ds.filter(
                    lambda d: d["id"] in PROMPTS and d["subject"] == subject
                )
            def letter_text(d):
                return PROMPTS[d["id"]]["block"]
            def letter_choices(d):
                return ["A", "B", "C", "D", "E", "F", "G", "H"][: len(d["choices"])]
            def cloze_text(d):
                return PROMPTS[d["id"]]["context"]
            def cloze_choices(d):
                return PROMPTS[d["id"]]["conts"]
            """
        )
        + "".join(f"process_{s} = _keep({s!r})\n" for s in subjects)
    )
    files = {"test": str((Path(DATA_DIR) / TASK_FILE).resolve()),
             "dev": str((Path(DATA_DIR) / "mmlu_dev.jsonl").resolve())}  # fmt: skip
    for mode, delim, desc in (("letter", " ", instruction + "\n"), ("cloze", "", "")):
        for s in subjects:
            (tasks / f"llmcal_{mode}_{s}.yaml").write_text(
                textwrap.dedent(
                    f"""
                    task: llmcal_mmlu_{mode}_{s}
                    dataset_path: json
                    dataset_kwargs:
                      data_files: {json.dumps(files)}
                    test_split: test
                    fewshot_split: dev
                    num_fewshot: {shots}
                    fewshot_config:
                      sampler: first_n
                    description: {json.dumps(desc)}
                    output_type: multiple_choice
                    process_docs: !function utils.process_{s}
                    doc_to_text: !function utils.{mode}_text
                    doc_to_choice: !function utils.{mode}_choices
                    doc_to_target: answer
                    target_delimiter: "{delim}"
                    metric_list:
                      - metric: acc
                    """
                )
            )


# -- one side ------------------------------------------------------------------------------------
class _ForwardTimer:
    """Accumulates the wall time spent inside a module's forward calls."""

    def __init__(self, module: Any) -> None:
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_: Any) -> None:
        self._start = time.process_time()

    def _post(self, *_: Any) -> None:
        self.total += time.process_time() - self._start


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    info = json.loads((work / "info.json").read_text())
    out: dict[str, Any] = {"modes": {}}
    if args.side == "llmcal":
        run = _llmcal_side(info["model_dir"], work, args.batch_size, out)
    else:
        run = _lmeval_side(info["model_dir"], work, args.batch_size, out)
    for mode in args.modes.split(","):
        start_fwd = out["timer"].total
        start, wall = time.process_time(), time.perf_counter()
        values = run(mode)
        seconds = time.process_time() - start
        out["modes"][mode] = {
            "seconds": seconds,
            "wall_seconds": time.perf_counter() - wall,
            "forward_seconds": out["timer"].total - start_fwd,
            "values": values,
        }
        print(f"{args.side} {mode}: {seconds:.1f} CPU s", flush=True)
    del out["timer"]
    out["peak_rss_mb"] = _rss_mb()
    (work / f"{args.side}.json").write_text(json.dumps(out))


def _llmcal_side(model_dir: str, work: Path, batch_size: int, out: dict[str, Any]) -> Any:
    from llmcal.models import HFScorer
    from llmcal.tasks import load_task

    scorer = HFScorer(model_dir, batch_size=batch_size, progress=False)
    ids = json.loads((work / "ids.json").read_text())
    task = load_task("mmlu", data_dir=DATA_DIR).select(ids)
    out["timer"] = _ForwardTimer(scorer.model)
    out["rss_after_load_mb"] = _rss_mb()

    info = json.loads((work / "info.json").read_text())
    shots = None
    if info.get("shots"):
        from llmcal.models import score_by_subject
        from llmcal.tasks import subject_shots

        shots = subject_shots(load_task("mmlu_dev", data_dir=DATA_DIR), k=info["shots"])

    def run(mode: str) -> dict[str, list[float]]:
        if shots is not None:
            scores = score_by_subject(scorer, task, shots, mode=mode, normalization="sum")
        else:
            scores = scorer.score(task, mode=mode, template="daca1", normalization="sum")
        return {
            i: [float(v) for v in row] for i, row in zip(scores.ids, scores.logits, strict=True)
        }

    return run


def _lmeval_side(model_dir: str, work: Path, batch_size: int, out: dict[str, Any]) -> Any:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, batch_size=batch_size, dtype="float32", device="cpu")
    manager = TaskManager(include_path=str(work / "tasks"))
    out["timer"] = _ForwardTimer(lm.model)
    out["rss_after_load_mb"] = _rss_mb()
    out["lm_eval_version"] = _version("lm_eval")

    info = json.loads((work / "info.json").read_text())
    prompts = json.loads((work / "prompts.json").read_text())

    def run(mode: str) -> dict[str, list[float]]:
        subjects = info.get("subjects") if info.get("shots") else None
        names = (
            [f"llmcal_mmlu_{mode}_{s}" for s in subjects] if subjects else [f"llmcal_mmlu_{mode}"]
        )
        res = simple_evaluate(
            model=lm, tasks=names, task_manager=manager, log_samples=True,
            batch_size=batch_size, verbosity="ERROR",
        )  # fmt: skip
        values = {}
        for name in names:
            for s in res["samples"][name]:
                values[s["doc"]["id"]] = [float(r[0]) for r in s["filtered_resps"]]
                if subjects:
                    _check_context(s, prompts[s["doc"]["id"]], mode, out)
        return values

    return run


def _check_context(
    sample: dict[str, Any], prompt: dict[str, Any], mode: str, out: dict[str, Any]
) -> None:
    """Count lm-eval contexts that differ from the prompt llmcal scores (must stay 0)."""
    args = sample["arguments"]
    pairs = list(args.values()) if isinstance(args, dict) else args
    ctx = pairs[0]["arg_0"] if isinstance(pairs[0], dict) else pairs[0][0]
    want = prompt["full_letter"] if mode == "letter" else prompt["full_cloze"]
    key = f"prompt_mismatches_{mode}"
    out[key] = out.get(key, 0) + int(ctx != want)
    out.setdefault(f"prompt_checked_{mode}", 0)
    out[f"prompt_checked_{mode}"] += 1
    if ctx != want and "first_mismatch" not in out:
        out["first_mismatch"] = {"lm_eval": ctx, "llmcal": want}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package.replace("_", "-"))


# -- comparison ----------------------------------------------------------------------------------
def _agreement(
    a: dict[str, list[float]], b: dict[str, list[float]], centre: bool
) -> dict[str, Any]:
    if set(a) != set(b):
        raise SystemExit(
            f"the two sides scored different questions ({len(set(a) ^ set(b))} differ)"
        )
    ids = sorted(a)
    same_argmax = 0
    max_diff = 0.0
    for i in ids:
        x, y = np.array(a[i]), np.array(b[i])
        if centre:
            x, y = x - x.mean(), y - y.mean()
        same_argmax += int(np.argmax(x) == np.argmax(y))
        max_diff = max(max_diff, float(np.max(np.abs(x - y))))
    return {"argmax_agreement": same_argmax / len(ids), "max_abs_logprob_diff": max_diff}


def _report(info: dict[str, Any], results: dict[str, Any], args: argparse.Namespace) -> None:
    runs = []
    modes = args.modes.split(",")
    for mode in modes:
        ours, theirs = results["llmcal"]["modes"][mode], results["lm-eval"]["modes"][mode]
        agree = _agreement(ours["values"], theirs["values"], centre=mode == "letter")
        row = {
            "mode": mode,
            "n": info["n"],
            "llmcal_q_per_s": info["n"] / ours["seconds"],
            "lm_eval_q_per_s": info["n"] / theirs["seconds"],
            "speedup": theirs["seconds"] / ours["seconds"],
            "llmcal_overhead_vs_forward": ours["seconds"] / ours["forward_seconds"] - 1,
            "lm_eval_overhead_vs_forward": theirs["seconds"] / theirs["forward_seconds"] - 1,
            "llmcal_forward_s": ours["forward_seconds"],
            "lm_eval_forward_s": theirs["forward_seconds"],
            "llmcal_cpu_s": ours["seconds"],
            "lm_eval_cpu_s": theirs["seconds"],
            "llmcal_wall_s": ours["wall_seconds"],
            "lm_eval_wall_s": theirs["wall_seconds"],
            **agree,
        }
        if args.shots:
            lm = results["lm-eval"]
            row["prompts_checked"] = lm.get(f"prompt_checked_{mode}", 0)
            row["prompt_mismatches"] = lm.get(f"prompt_mismatches_{mode}", 0)
        runs.append(row)
        print(row, flush=True)
    memory = {
        side: {"peak_rss_mb": results[side]["peak_rss_mb"],
               "rss_after_load_mb": results[side]["rss_after_load_mb"]}
        for side in results
    }  # fmt: skip
    payload = {
        **info, "batch_size": args.batch_size, "threads": args.threads,
        "lm_eval_version": results["lm-eval"]["lm_eval_version"], "runs": runs, "memory": memory,
    }  # fmt: skip
    if args.shots:
        _report_fewshot(info, results, args, runs, memory, payload)
        return
    rows = [
        [r["mode"], f"{r['llmcal_q_per_s']:.2f}", f"{r['lm_eval_q_per_s']:.2f}",
         f"**{r['speedup']:.2f}×**", f"{100 * r['llmcal_overhead_vs_forward']:.1f} %",
         f"{100 * r['lm_eval_overhead_vs_forward']:.1f} %", f"{100 * r['argmax_agreement']:.1f} %",
         f"{r['max_abs_logprob_diff']:.1e}"]
        for r in runs
    ]  # fmt: skip
    md = "# Scoring: llmcal vs lm-evaluation-harness\n\n"
    md += (
        f"{info['n']} MMLU test questions (seeded subset, seed 0), bundled SmolLM2-135M-Instruct "
        f"loaded by both tools from the same converted float32 directory, batch size "
        f"{args.batch_size}, {args.threads} CPU thread(s), lm-eval {payload['lm_eval_version']}. "
        "Both sides ran one after the other in child processes of one script run; model loading "
        "excluded; q/s are per CPU-second of the process (one torch thread each). Overhead = total time / time inside the model's forward calls − 1. Letter "
        "log-probs compared after centring each row (llmcal keeps raw option logits).\n\n"
    )
    md += md_table(
        ["mode", "llmcal q/s", "lm-eval q/s", "speed-up", "llmcal overhead vs forward",
         "lm-eval overhead vs forward", "same argmax", "max |Δ log-prob|"],
        rows,
    )  # fmt: skip
    md += "\n| side | RSS after load (MB) | peak RSS (MB) |\n|---|---|---|\n"
    for side, m in memory.items():
        md += f"| {side} | {m['rss_after_load_mb']:.0f} | {m['peak_rss_mb']:.0f} |\n"
    write_results("vs_lmeval", payload, md)


def _report_fewshot(
    info: dict[str, Any],
    results: dict[str, Any],
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    memory: dict[str, Any],
    payload: dict[str, Any],
) -> None:
    """benchmarks/results/vs_lmeval_5shot.{json,md}."""
    if "first_mismatch" in results["lm-eval"]:
        payload["first_prompt_mismatch"] = results["lm-eval"]["first_mismatch"]
    rows = [
        [r["mode"], f"{r['llmcal_cpu_s']:.0f}", f"{r['lm_eval_cpu_s']:.0f}",
         f"{r['llmcal_q_per_s']:.3f}", f"{r['lm_eval_q_per_s']:.3f}", f"**{r['speedup']:.2f}×**",
         f"{100 * r['argmax_agreement']:.1f} %", f"{r['max_abs_logprob_diff']:.1e}",
         f"{r['prompts_checked'] - r['prompt_mismatches']} / {r['prompts_checked']}"]
        for r in runs
    ]  # fmt: skip
    md = "# Five-shot MMLU scoring: llmcal vs lm-evaluation-harness\n\n"
    md += (
        f"{info['n']} MMLU test questions: {info['per_subject']} seeded questions from each of "
        f"{len(info['subjects'])} seeded subjects ({', '.join(info['subjects'])}"
        + (
            f"; drawn among the subjects whose five examples have at most "
            f"{info['max_shot_chars']} characters: the long-passage subjects such as the "
            "history ones are left out; on high_school_european_history lm-eval's first batch "
            "of 8 took 3 minutes and 14 GB on one CPU thread, too long for this machine"
            if info.get("max_shot_chars")
            else ""
        )
        + f"), each subject's "
        f"first {info['shots']} dev questions as the examples (lm-eval: `num_fewshot: "
        f"{info['shots']}`, sampler `first_n`; every lm-eval context checked to equal llmcal's "
        "prompt). Bundled SmolLM2-135M-Instruct loaded by both tools from the same converted "
        f"float32 directory, batch size {args.batch_size}, {args.threads} CPU thread(s), "
        f"lm-eval {payload['lm_eval_version']}; sides run one after the other in child "
        "processes; model loading excluded; times are process CPU seconds (one torch thread "
        "each), robust to the load of the shared machine. Letter log-probs compared after "
        "centring each row; cloze: summed log-likelihoods.\n\n"
    )
    md += md_table(
        ["mode", "llmcal CPU s", "lm-eval CPU s", "llmcal q/CPU-s", "lm-eval q/CPU-s",
         "speed-up", "same argmax", "max |Δ log-prob|", "identical prompts"],
        rows,
    )  # fmt: skip
    md += "\n| side | RSS after load (MB) | peak RSS (MB) |\n|---|---|---|\n"
    for side, m in memory.items():
        md += f"| {side} | {m['rss_after_load_mb']:.0f} | {m['peak_rss_mb']:.0f} |\n"
    write_results("vs_lmeval_5shot", payload, md)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
