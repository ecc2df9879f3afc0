"""Read lm-evaluation-harness ``--log_samples`` output of multiple-choice tasks as Scores.

``lm_eval run ... --log_samples --output_path OUT`` writes, per task,
``OUT/<model>/samples_<task>_<date>.jsonl`` (one JSON object per document) and, beside it, the
aggregated ``results_<date>.json``. A multiple-choice sample has one log-likelihood request per
option::

    {"doc_id": 0, "doc": {...}, "target": "2",
     "arguments": {"gen_args_0": {"arg_0": "<context>", "arg_1": "<continuation 0>"}, ...},
     "resps": [[["-12.3", "False"]], ...], "filtered_resps": [["-12.3", "False"], ...],
     "filter": "none", "acc": 1.0, ...}

(lm-eval writes the numbers as strings.) The option logits are the summed log-likelihoods
``filtered_resps[i][0]`` of each continuation (``normalization="sum"``, what lm-eval's ``acc``
compares) or those divided by the option's character length (``"acc_norm"``, lm-eval's
``acc_norm``: the length of the choice without the task's ``target_delimiter``). The label is
``target`` (an option index, or the text of the right choice). The results file, when found
beside the samples file (same date suffix) or given, adds the model arguments, the lm-eval
version, the task config and hashes to ``meta["lm_eval"]``. ``meta["mode"]`` is ``"letter"``
when every option is a bare letter (A, B, …: lm-eval's letter-choice tasks), else ``"cloze"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmcal._io import loads_json
from llmcal.errors import DataError
from llmcal.scores import Scores
from llmcal.tasks.types import LETTERS

NORMALIZATIONS = ("sum", "acc_norm")
_SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl?$")
_SECRET = re.compile(r"(token|key|secret|password|auth)", re.IGNORECASE)


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a JSONL file, or of each item of a JSON list."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc
    if text.lstrip().startswith("["):
        try:
            items = loads_json(text)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, loads_json(line)
        except ValueError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc})") from None


def _arguments(sample: dict[str, Any], where: str) -> list[tuple[str, str]]:
    """(context, continuation) of each request, in request order."""
    args = sample.get("arguments")
    pairs: list[Any]
    if isinstance(args, dict):  # the saved form: {"gen_args_0": {"arg_0": ..., "arg_1": ...}}
        keyed = []
        for key, value in args.items():
            m = re.fullmatch(r"gen_args_(\d+)", key)
            if m is None or not isinstance(value, dict):
                raise DataError(f"{where}: unexpected 'arguments' entry {key!r}")
            keyed.append((int(m.group(1)), [value.get("arg_0"), value.get("arg_1")]))
        pairs = [p for _, p in sorted(keyed)]
    elif isinstance(args, list):  # the in-memory form: [[context, continuation], ...]
        pairs = [list(a) if isinstance(a, (list, tuple)) else [a, None] for a in args]
    else:
        raise DataError(f"{where}: no 'arguments'; is this an lm-eval --log_samples file?")
    out = []
    for p in pairs:
        if len(p) < 2 or not isinstance(p[0], str) or not isinstance(p[1], str):
            raise DataError(
                f"{where}: the requests are not (context, continuation) log-likelihood pairs, so "
                "this is not a multiple-choice task (generate_until output cannot be imported: "
                "it has no per-option scores)"
            )
        out.append((p[0], p[1]))
    return out


def _loglikelihoods(sample: dict[str, Any], n: int, where: str) -> list[float]:
    resps = sample.get("filtered_resps", sample.get("resps"))
    if not isinstance(resps, list) or len(resps) != n:
        raise DataError(
            f"{where}: 'filtered_resps' must hold one response per option ({n}), got "
            f"{resps if not isinstance(resps, list) else len(resps)!r}"
        )
    out = []
    for r in resps:
        value = r
        while isinstance(value, (list, tuple)) and value:  # [ll, is_greedy] or [[ll, is_greedy]]
            value = value[0]
        try:
            ll = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: response {r!r} is not a log-likelihood") from None
        if math.isnan(ll) or ll > 0.0:
            raise DataError(f"{where}: response {r!r} is not a log-likelihood (≤ 0)")
        out.append(ll)
    return out


def _label(target: Any, conts: list[str], delim: str, where: str) -> int:
    """The option index of lm-eval's ``target`` (an index, or the right choice's text)."""
    if isinstance(target, bool):
        raise DataError(f"{where}: target {target!r} is not an option index")
    if isinstance(target, int):
        index = target
    else:
        text = str(target)
        if re.fullmatch(r"-?\d+", text.strip()):
            index = int(text)
        elif text.startswith("["):  # several gold answers: not one label
            return -1
        else:
            hits = [i for i, c in enumerate(conts) if c in (delim + text, text)]
            if len(hits) != 1:
                hits = [i for i, c in enumerate(conts) if c.strip() == text.strip()]
            if len(hits) != 1:
                raise DataError(
                    f"{where}: target {text!r} matches {len(hits)} of the options "
                    f"{[c.strip() for c in conts]}; expected exactly one"
                )
            index = hits[0]
    if not 0 <= index < len(conts):
        raise DataError(f"{where}: target {index} is outside 0..{len(conts) - 1}")
    return index


def find_results_file(samples: Path) -> Path | None:
    """The aggregated results JSON lm-eval wrote beside ``samples`` (same date suffix)."""
    m = _SAMPLES_NAME.match(samples.name)
    if m is None:
        return None
    candidates = sorted(samples.parent.glob(f"*_{m.group('date')}.json"))
    return candidates[0] if len(candidates) == 1 else None


def redact_model_args(model_args: Any) -> Any:
    """``model_args`` with the values of token / key / secret / password entries hidden."""
    if isinstance(model_args, dict):
        return {k: "***" if _SECRET.search(str(k)) else v for k, v in model_args.items()}
    if isinstance(model_args, str):
        parts = []
        for part in model_args.split(","):
            key, sep, _ = part.partition("=")
            parts.append(f"{key}=***" if sep and _SECRET.search(key) else part)
        return ",".join(parts)
    return model_args


def _model_name(model_args: Any, results: dict[str, Any]) -> str | None:
    if isinstance(model_args, dict) and model_args.get("pretrained"):
        return str(model_args["pretrained"])
    if isinstance(model_args, str):
        for part in model_args.split(","):
            key, _, value = part.partition("=")
            if key.strip() in ("pretrained", "model", "engine") and value:
                return value.strip()
    name = results.get("model_name")
    return str(name) if name else None


def read_lm_eval_samples(
    path: str | Path,
    *,
    results: str | Path | None = None,
    task: str | None = None,
    id_field: str = "auto",
    normalization: str = "sum",
    filter_name: str | None = None,
) -> Scores:
    """Scores from an lm-eval ``samples_<task>_<date>.jsonl`` file (see the module docstring).

    ``id_field``: ``"auto"`` uses ``doc["id"]`` when every document has a distinct one (so the
    Scores join llmcal's own runs of the same data), else lm-eval's ``doc_id``; ``"doc_id"``, or
    any other name of a ``doc`` field. ``filter_name`` picks one filter when the file has several.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such lm-eval samples file")
    if normalization not in NORMALIZATIONS:
        raise DataError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    results_path = Path(results) if results is not None else find_results_file(path)
    agg: dict[str, Any] = {}
    if results_path is not None:
        try:
            agg = loads_json(results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{results_path}: not a readable lm-eval results file ({exc})") from exc
        if not isinstance(agg, dict):
            raise DataError(f"{results_path}: not an lm-eval results file (not a JSON object)")
    m = _SAMPLES_NAME.match(path.name)
    configs: dict[str, Any] = agg["configs"] if isinstance(agg.get("configs"), dict) else {}
    task_name = task or (m.group("task") if m else None)
    if task_name is None and len(configs) == 1:
        task_name = next(iter(configs))
    task_config: Any = configs.get(task_name, {}) if task_name else {}
    delim = task_config.get("target_delimiter", " ") if isinstance(task_config, dict) else " "

    samples: list[tuple[str, dict[str, Any]]] = []
    filters: set[str] = set()
    for n, sample in _rows(path):
        where = f"{path}:{n}"
        if not isinstance(sample, dict) or "doc_id" not in sample:
            raise DataError(f"{where}: not an lm-eval sample (a JSON object with 'doc_id')")
        name = str(sample.get("filter", "none"))
        filters.add(name)
        samples.append((where, sample))
    if not samples:
        raise DataError(f"{path}: the file holds no samples")
    if filter_name is None and len(filters) > 1:
        raise DataError(
            f"{path}: samples of several filters {sorted(filters)}; pick one with --filter"
        )
    if filter_name is not None:
        if filter_name not in filters:
            raise DataError(
                f"{path}: no samples of filter {filter_name!r}; it has {sorted(filters)}"
            )
        samples = [(w, s) for w, s in samples if str(s.get("filter", "none")) == filter_name]
    samples.sort(key=lambda ws: int(ws[1]["doc_id"]))

    rows: list[list[float]] = []
    letters = True  # every option a bare letter A, B, … in order: letter-mode scoring
    labels: list[int] = []
    doc_ids: list[str] = []
    docs: list[Any] = []
    for where, sample in samples:
        pairs = _arguments(sample, where)
        if len(pairs) < 2:
            raise DataError(
                f"{where}: {len(pairs)} request(s) for this document; a multiple-choice sample "
                "has one per option (≥ 2)"
            )
        conts = [c for _, c in pairs]
        letters = letters and [c.strip() for c in conts] == list(LETTERS[: len(conts)])
        ll = _loglikelihoods(sample, len(pairs), where)
        if normalization == "acc_norm":
            ll = [v / max(1, len(c) - len(delim)) for v, c in zip(ll, conts, strict=True)]
        rows.append(ll)
        labels.append(_label(sample.get("target"), conts, delim, where))
        doc_ids.append(str(sample["doc_id"]))
        docs.append(sample.get("doc"))

    ids, id_source = _ids(doc_ids, docs, id_field, path)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(
            f"{path}: id {dup!r} appears in more than one sample; pick another --id-field "
            "(or doc_id)"
        )
    subjects = None
    if any(isinstance(d, dict) and isinstance(d.get("subject"), str) for d in docs):
        subjects = np.array(
            [d.get("subject") if isinstance(d, dict) else None for d in docs], dtype=object
        )
    k = max(len(r) for r in rows)
    logits = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        logits[i, : len(r)] = r

    config: dict[str, Any] = agg["config"] if isinstance(agg.get("config"), dict) else {}
    model_args = redact_model_args(config.get("model_args"))
    first = samples[0][1]
    record = {
        "version": agg.get("lm_eval_version"),
        "transformers_version": agg.get("transformers_version"),
        "git_hash": agg.get("git_hash"),
        "date": agg.get("date"),
        "model": config.get("model"),
        "model_args": model_args,
        "num_fewshot": (agg.get("n-shot") or {}).get(task_name) if task_name else None,
        "task_version": (agg.get("versions") or {}).get(task_name) if task_name else None,
        "task_hash": (agg.get("task_hashes") or {}).get(task_name) if task_name else None,
        "output_type": task_config.get("output_type") if isinstance(task_config, dict) else None,
        "target_delimiter": delim,
        "filter": next(iter(filters)) if filter_name is None else filter_name,
        "samples_file": path.name,
        "results_file": results_path.name if results_path is not None else None,
    }
    meta = {
        "task": task_name,
        "model": _model_name(config.get("model_args"), agg),
        "backend": "lm-eval",
        "mode": "letter" if letters else "cloze",
        "template": f"lm-eval:{task_name}" if task_name else "lm-eval",
        "normalization": normalization,
        "logit_kind": "loglikelihood",
        "imported_from": "lm-eval",
        "id_source": id_source,
        "example_prompt": _arguments(first, samples[0][0])[0][0],
        "lm_eval": record,
    }
    try:
        return Scores(
            ids=np.array(ids, dtype=object),
            logits=logits,
            labels=np.array(labels, dtype=np.int64),
            meta=meta,
            subjects=subjects,
            n_options=np.array([len(r) for r in rows], dtype=np.int64),
        )
    except Exception as exc:  # a ScoresError names the row; say which file it came from
        raise DataError(f"{path}: {exc}") from exc


def _ids(doc_ids: list[str], docs: list[Any], id_field: str, path: Path) -> tuple[list[str], str]:
    if id_field == "doc_id":
        return doc_ids, "doc_id"
    field = "id" if id_field == "auto" else id_field
    values = [d.get(field) if isinstance(d, dict) else None for d in docs]
    ok = all(isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) for v in values)
    if ok and len({str(v) for v in values}) == len(values):
        return [str(v) for v in values], f"doc.{field}"
    if id_field == "auto":
        return doc_ids, "doc_id"
    raise DataError(
        f"{path}: doc field {field!r} is not a distinct non-empty id in every sample; use "
        "--id-field doc_id (lm-eval's document index) or another field"
    )
