"""Read saved OpenAI-compatible responses with top log-probs (letter answers) as Scores.

For people who called an API themselves: ask for the answer letter with ``max_tokens=1`` and
``logprobs=true, top_logprobs=K`` (chat) or ``logprobs=K`` (completions), save each raw
response body, and import the file. One JSON object per line::

    {"id": "q1", "response": {...the raw response body...}, "n_options": 4, "label": 2}

* ``id`` (string or integer, unique) names the question; ``response`` is the body of a
  ``/v1/chat/completions`` or ``/v1/completions`` response (detected per row);
* ``n_options`` (or a ``choices`` list of the option texts) says how many letters A, B, … count;
  optional when ``--task`` supplies the question;
* ``label`` (option index, or letter ``"C"``; ``null`` / missing = unknown) and ``subject`` are
  optional; with ``--task`` the task's answer and subject are used (a label given in both places
  must agree).

OpenAI Batch API output lines (``{"custom_id": …, "response": {"status_code": 200, "body": {…}}}``)
are read as they are (``custom_id`` is the id).

The top log-probs are mapped to options exactly as :class:`~llmcal.models.http.HTTPScorer`
maps them (same functions): tokens ``" A"``, ``"A"``, ``"a"``, ``"(A"`` count for option A, several
tokens of one option add up, and an option missing from the top-k gets the log-prob floor
:data:`~llmcal.models.http.TOPK_FLOOR`, recorded in ``meta["topk"]["truncated"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmcal._io import loads_json
from llmcal.errors import DataError, LLMCalError
from llmcal.models.http import TOPK_FLOOR, _chat_top, _completion_top, map_top_logprobs
from llmcal.scores import Scores
from llmcal.tasks.types import LETTERS, Task


def _body_and_id(row: dict[str, Any], where: str) -> tuple[str, Any]:
    resp = row.get("response")
    if "custom_id" in row and (resp is None or (isinstance(resp, dict) and "body" in resp)):
        status = resp.get("status_code", 200) if resp is not None else None
        if row.get("error") or resp is None or status != 200:  # a failed request
            got = "no response" if resp is None else f"status {status}"
            raise DataError(
                f"{where}: the batch request {row['custom_id']!r} failed ({got}, error "
                f"{row.get('error')!r}); drop the row or re-run that request"
            )
        qid: Any = row["custom_id"]
        body = resp["body"]
    else:
        qid, body = row.get("id"), row.get("response")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid):
        raise DataError(f"{where}: 'id' must be a non-empty string or integer, got {qid!r}")
    if not isinstance(body, dict):
        raise DataError(
            f"{where}: 'response' must be the raw response body (a JSON object), got "
            f"{type(body).__name__}"
        )
    return str(qid), body


def _top(body: dict[str, Any], where: str) -> tuple[list[tuple[str, float]], str]:
    """(token, log-prob) pairs of the first generated token and which API made them."""
    try:
        lp = body["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        err = body.get("error")
        if err is not None:  # a saved failure: say what the API said, not just what is missing
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise DataError(
                f"{where}: the saved response is an API error ({str(msg)[:200]}); rerun that "
                "request or drop the line"
            ) from None
        raise DataError(f"{where}: not a completion response (no choices[0])") from None
    api = "chat" if isinstance(lp, dict) and "content" in lp else "completions"
    try:
        top = _chat_top(body) if api == "chat" else _completion_top(body, 0)
    except (LLMCalError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: unreadable log-probs ({exc})") from None
    if not top:
        raise DataError(
            f"{where}: the response has no top log-probs; request them with logprobs=true, "
            "top_logprobs=K (chat) or logprobs=K (completions) and max_tokens=1"
        )
    return top, api


def _label(value: Any, n: int, where: str) -> int:
    if value is None:
        return -1
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    elif isinstance(value, int) and not isinstance(value, bool):
        index = value
    else:
        raise DataError(f"{where}: 'label' must be an option index or letter, got {value!r}")
    if not -1 <= index < n:
        raise DataError(f"{where}: label {value!r} is outside the {n} options")
    return index


def read_openai_responses(
    path: str | Path, task: Task | None = None, model: str | None = None
) -> Scores:
    """Scores from a JSONL file of saved responses (see the module docstring for the row shape)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such responses file")
    by_id = {q.id: q for q in task} if task is not None else {}
    ids: list[str] = []
    rows: list[list[float]] = []
    labels: list[int] = []
    subjects: list[str | None] = []
    apis: set[str] = set()
    models: set[str] = set()
    truncated: dict[str, dict[str, Any]] = {}
    k_seen = 0
    blind = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = loads_json(line)
        except ValueError as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object")
        qid, body = _body_and_id(row, where)
        where = f"{where} (id {qid!r})"
        question = by_id.get(qid)
        if task is not None and question is None:
            raise DataError(f"{where}: task {task.name!r} has no question with this id")
        n_opt = row.get("n_options")
        if n_opt is None and isinstance(row.get("choices"), list):
            n_opt = len(row["choices"])
        if n_opt is None and question is not None:
            n_opt = len(question.choices)
        if isinstance(n_opt, bool) or not isinstance(n_opt, int) or not 2 <= n_opt <= 26:
            raise DataError(
                f"{where}: 'n_options' must be an integer 2..26 (or give 'choices', or --task), "
                f"got {n_opt!r}"
            )
        if question is not None and len(question.choices) != n_opt:
            raise DataError(
                f"{where}: n_options {n_opt} but the task's question has {len(question.choices)}"
            )
        label = _label(row.get("label"), n_opt, where)
        if question is not None and question.answer is not None:
            if label >= 0 and label != question.answer:
                raise DataError(
                    f"{where}: label {label} disagrees with the task's answer {question.answer}"
                )
            label = question.answer
        top, api = _top(body, where)
        values, missing, unseen = map_top_logprobs(top, n_opt)
        if missing:
            truncated[qid] = {"missing": missing, "unseen_mass": unseen}
            blind += len(missing) == n_opt
        ids.append(qid)
        rows.append(values)
        labels.append(label)
        subject = row.get("subject", question.subject if question is not None else None)
        subjects.append(subject if isinstance(subject, str) else None)
        apis.add(api)
        if isinstance(body.get("model"), str):
            models.add(body["model"])
        k_seen = max(k_seen, len(top))
    if not ids:
        raise DataError(f"{path}: the file holds no responses")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: id {dup!r} appears on more than one line")
    if model is None and len(models) > 1:
        raise DataError(
            f"{path}: responses come from several models {sorted(models)}; import each model's "
            "responses separately (or name one with --model)"
        )
    k = max(len(r) for r in rows)
    logits = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        logits[i, : len(r)] = r
    meta = {
        "task": task.name if task is not None else None,
        "model": model or (next(iter(models)) if models else None),
        "backend": "openai-import",
        "mode": "letter",
        "api": "+".join(sorted(apis)),
        "template": None,
        "logit_kind": "topk_logprobs",
        "imported_from": "openai-responses",
        "source_file": path.name,
        "n_no_option_in_topk": blind,
        "topk": {
            "k": k_seen,
            "floor": TOPK_FLOOR,
            "fill": "floor (missing options get log-prob floor; DACA missing='spread' "
            "can share unseen_mass among them instead)",
            "truncated": truncated,
        },
    }
    try:
        return Scores(
            ids=np.array(ids, dtype=object),
            logits=logits,
            labels=np.array(labels, dtype=np.int64),
            meta=meta,
            subjects=np.array(subjects, dtype=object) if any(subjects) else None,
            n_options=np.array([len(r) for r in rows], dtype=np.int64),
        )
    except LLMCalError as exc:
        raise DataError(f"{path}: {exc}") from exc
