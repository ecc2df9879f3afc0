"""Questions → training examples, tokenised exactly as HFScorer scores them.

Letter mode: the prompt is rendered by :meth:`HFScorer.render_letter` and tokenised by
:meth:`HFScorer.encode`; the answer is the single option-letter token that
:meth:`HFScorer.option_token_ids` resolves (e.g. ``" A"``), appended explicitly (cft_rcft.md §7.8).
So the logits at the last prompt position, which the scorer reads, are the ones trained.

Cloze mode: each question becomes one row per option, context + continuation as
:meth:`HFScorer.cloze_item` splits them; the option's score is its continuation's summed
log-probability divided as ``--normalization`` says (:func:`~llmcal.models.hf.cloze_divisor`),
the number ``llmcal score --mode cloze`` gives, and the K scores are the option logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from llmcal.errors import ConfigError, LLMCalWarning
from llmcal.tasks.templates import Template
from llmcal.tasks.types import Question, Task

if TYPE_CHECKING:
    import torch

    from llmcal.models.base import Normalization
    from llmcal.models.hf import HFScorer


@dataclass(frozen=True)
class LetterFormat:
    """How a task is rendered for one tokenizer: template, K and the option-letter token ids."""

    template: Template
    option_ids: tuple[int, ...]

    @property
    def k(self) -> int:
        """Number of option tokens (the largest number of choices)."""
        return len(self.option_ids)


def letter_format(scorer: HFScorer, task: Task, template: Template) -> LetterFormat:
    """Resolve the option-letter tokens for ``task`` the way HFScorer's letter mode does."""
    if len(task) == 0:
        raise ConfigError(f"task {task.name!r} has no questions")
    prompt = scorer.render_letter(task[0], template)
    ids = scorer.option_token_ids(prompt, template.answer_sep, task.max_choices, template.chat)
    return LetterFormat(template, tuple(ids))


#: The two letter conventions of the CFT format: bare "A" after ``Answer:`` or " A".
CFT_VARIANTS = {"bare": "cft", "space": "cft-space"}


def letter_mass(scorer: HFScorer, task: Task, template: Template, n: int = 32) -> float:
    """Mean probability (full vocabulary) the model puts on the K letter tokens after the prompt.

    Over the first ``n`` questions of ``task``; raises ModelError where the letters are not
    single tokens after the prompt.
    """
    import torch

    qs = list(task)[:n]
    prompt = scorer.render_letter(qs[0], template)
    ids = scorer.option_token_ids(prompt, template.answer_sep, task.max_choices, template.chat)
    seqs = [scorer.encode(scorer.render_letter(q, template), template.chat) for q in qs]
    total = 0.0
    for start in range(0, len(seqs), 8):
        with torch.inference_mode():
            logits = scorer._last_logits(seqs[start : start + 8]).double()
        probs = torch.softmax(logits, dim=-1)[:, ids]
        for j, q in enumerate(qs[start : start + 8]):
            total += float(probs[j, : len(q.choices)].sum())
    return total / len(qs)


def resolve_letter_template(
    scorer: HFScorer, task: Task, template: Template, letter_sep: str = "auto"
) -> tuple[Template, dict[str, float]]:
    """The CFT template variant to use: bare / space letter as asked, or by letter mass.

    Templates other than the CFT format are returned unchanged. With ``"auto"`` the variant
    whose letter tokens get more probability mass after ``Answer:`` wins (cft_rcft.md §7.8);
    a variant whose letters are not single tokens after the prompt is not a candidate.
    Returns the template and the measured mass of each candidate.
    """
    from llmcal.errors import ModelError
    from llmcal.tasks.templates import get_template

    if template.style != "cft":
        return template, {}
    if letter_sep != "auto":
        return get_template(CFT_VARIANTS[letter_sep]), {}
    masses: dict[str, float] = {}
    for kind, name in CFT_VARIANTS.items():
        try:
            masses[kind] = letter_mass(scorer, task, get_template(name))
        except ModelError:
            continue
    if not masses:
        raise ConfigError(
            f"neither 'A' nor ' A' is a single token after '### Answer:' for {scorer.name!r}; "
            "use a daca template"
        )
    best = max(masses, key=lambda k: masses[k])
    return get_template(CFT_VARIANTS[best]), masses


def _labelled(task: Task, k: int) -> Iterator[tuple[Question, int]]:
    """``(question, answer)`` for every question of ``task``, each checked to have an answer and
    at most ``k`` options."""
    if task.max_choices > k:
        raise ConfigError(
            f"task {task.name!r} has questions with {task.max_choices} choices but the format "
            f"was resolved for {k}"
        )
    for q in task:
        if q.answer is None:
            raise ConfigError(f"question {q.id!r} has no answer; fine-tuning needs labels")
        yield q, q.answer


def encode_task(
    scorer: HFScorer,
    task: Task,
    fmt: LetterFormat,
    max_length: int | None = None,
    ref_known: dict[str, bool] | None = None,
    what: str = "training",
) -> list[dict[str, Any]]:
    """One example per question: prompt ids + gold letter id, label, number of choices.

    ``max_length`` truncates the prompt on the left (the ``Answer:`` end is kept);
    ``ref_known`` optionally tags each question as known / unknown for diagnostics.
    """
    out, cut = [], 0
    for q, answer in _labelled(task, fmt.k):
        prompt = scorer.encode(scorer.render_letter(q, fmt.template), fmt.template.chat)
        if max_length is not None and len(prompt) + 1 > max_length:
            prompt = prompt[len(prompt) + 1 - max_length :]
            cut += 1
        known = -1 if ref_known is None or q.id not in ref_known else int(ref_known[q.id])
        out.append(
            {
                "input_ids": [*prompt, fmt.option_ids[answer]],
                "label": answer,
                "n_choices": len(q.choices),
                "ref_known": known,
            }
        )
    _warn_truncated(task, cut, max_length, what)
    return out


def _warn_truncated(task: Task, cut: int, max_length: int | None, what: str) -> None:
    """One warning when ``--max-length`` cut the start off some of ``task``'s prompts
    (``what``: which split they are, for the message)."""
    if cut:
        warnings.warn(
            f"--max-length {max_length} cut the start off {cut} of {len(task)} {what} prompts "
            "(the model does not see their whole question); raise it to keep them",
            LLMCalWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class ClozeFormat:
    """Cloze mode for one task: the template (its context style), normalisation and K."""

    template: Template
    normalization: Normalization
    k: int


def encode_cloze_task(
    scorer: HFScorer,
    task: Task,
    fmt: ClozeFormat,
    max_length: int | None = None,
    ref_known: dict[str, bool] | None = None,
    what: str = "training",
) -> list[dict[str, Any]]:
    """One example per question: context ids, per-option continuation ids and divisors.

    ``max_length`` truncates the context on the left so that the context and its longest
    continuation fit (the ``Answer:`` end is kept).
    """
    from llmcal.models.hf import cloze_divisor

    out, cut = [], 0
    for q, answer in _labelled(task, fmt.k):
        ctx, options = scorer.cloze_item(q, fmt.template)
        if not ctx:
            raise ConfigError(f"question {q.id!r}: the cloze context encodes to no tokens")
        longest = max(len(c) for c, _ in options)
        if max_length is not None and len(ctx) + longest > max_length:
            if longest >= max_length:
                raise ConfigError(
                    f"question {q.id!r}: an option is {longest} tokens long, more than "
                    f"--max-length {max_length}; raise it"
                )
            ctx = ctx[len(ctx) + longest - max_length :]
            cut += 1
        known = -1 if ref_known is None or q.id not in ref_known else int(ref_known[q.id])
        out.append(
            {
                "context": ctx,
                "options": [c for c, _ in options],
                "divisor": [cloze_divisor(len(c), n, fmt.normalization) for c, n in options],
                "label": answer,
                "n_choices": len(q.choices),
                "ref_known": known,
            }
        )
    _warn_truncated(task, cut, max_length, what)
    return out


def cloze_layout(model: Any, examples: Sequence[dict[str, Any]], asked: str = "auto") -> str:
    """``"packed"`` where the model takes a custom 4-D mask over the whole packed row (eager or
    SDPA attention, no sliding window shorter than the longest packed question), else ``"rows"``;
    ``asked`` other than ``"auto"`` is taken as it is."""
    if asked != "auto":
        return asked
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", "eager") or "eager"
    window = getattr(config, "sliding_window", None)
    longest = max(len(e["context"]) + sum(len(o) for o in e["options"]) for e in examples)
    if attn not in ("eager", "sdpa") or (window is not None and longest > int(window)):
        return "rows"
    return "packed"


def _option_mask(examples: Sequence[dict[str, Any]], k: int) -> torch.Tensor:
    import torch

    n = torch.tensor([e["n_choices"] for e in examples])
    return torch.arange(k)[None, :] < n[:, None]


def _pairs(mask: torch.Tensor) -> float:
    """Real (token, next token) pairs: the tokens a full-sequence SFT loss is taken over."""
    return float((mask[:, 1:] * mask[:, :-1]).sum())


class LetterCollator:
    """Left-pads examples and adds everything the losses need.

    Batch keys: ``input_ids``, ``attention_mask``, ``position_ids`` (as HFScorer builds them),
    ``answer_pos`` (index of the position whose logits predict the answer letter; the last
    prompt token), ``answer_token``, ``option_label`` (gold option index), ``option_mask`` ([B, K]),
    ``ref_known`` (1 / 0 / −1 = untagged) and ``counts`` (examples, answer tokens, sequence
    token pairs: what the losses are normalised by).
    """

    def __init__(self, pad_id: int, k: int) -> None:
        self.pad_id = pad_id
        self.k = k

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        from llmcal.models.hf import left_pad

        ids, mask, position_ids = left_pad([e["input_ids"] for e in examples], self.pad_id)
        n, width = ids.shape
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": position_ids,
            "answer_pos": torch.full((n,), width - 2, dtype=torch.long),
            "answer_token": ids[:, -1].clone(),
            "option_label": torch.tensor([e["label"] for e in examples], dtype=torch.long),
            "option_mask": _option_mask(examples, self.k),
            "ref_known": torch.tensor([e.get("ref_known", -1) for e in examples]),
            "counts": torch.tensor([n, n, _pairs(mask)], dtype=torch.float64),
        }


def _padded(rows: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [len(rows), width] long tensor and its 0/1 float mask."""
    import torch

    out = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, x in enumerate(rows):
        out[r, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        mask[r, : len(x)] = 1.0
    return out, mask


class ClozeCollator:
    """Cloze batches: every option's continuation tokens and where they are predicted.

    ``layout="packed"`` (default): one row per question, the context followed by all its
    options, with a 4-D attention mask under which each option sees the context and itself
    only, and positions that restart after the context for every option — the same numbers as
    one ``context + option`` sequence per option, for about a third of the tokens. Models
    whose attention is windowed (Gemma's sliding layers) take ``layout="rows"``: one ordinary
    left-padded row per (question, option).

    Batch keys: ``input_ids``, ``attention_mask`` ([N, W], or [N, 1, W, W] additive when
    packed), ``position_ids``; per option r of the batch: ``opt_row`` ([R]: its input row),
    ``opt_pos`` / ``opt_tgt`` / ``opt_mask`` ([R, M]: the absolute positions predicting its
    tokens, the tokens, 1 on real ones), ``divisor``, ``slot`` (b·K + j: its place in the
    [B, K] option logits); ``gold_opt`` ([B]: the gold option's r); ``full_row`` /
    ``full_pos`` / ``full_tgt`` / ``full_mask``: every (position, next token) pair of the gold
    sequence (context + gold option), for the full-sequence SFT; ``keep`` (the number of last
    positions holding every ``opt_pos``); ``option_label``, ``option_mask``, ``ref_known`` and
    ``counts`` (examples, gold continuation tokens, gold-sequence pairs).
    """

    def __init__(self, pad_id: int, k: int, layout: str = "packed") -> None:
        if layout not in ("packed", "rows"):
            raise ValueError(f"layout must be 'packed' or 'rows', got {layout!r}")
        self.pad_id = pad_id
        self.k = k
        self.layout = layout

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        seqs: list[list[int]] = []
        positions: list[list[int]] = []
        # per option: input row, (position, target) pairs as offsets from the row's start
        opts: list[tuple[int, list[int], list[int]]] = []
        full: list[tuple[int, list[int], list[int]]] = []
        divisor: list[float] = []
        slot: list[int] = []
        gold: list[int] = []
        for b, e in enumerate(examples):
            ctx = list(e["context"])
            c = len(ctx)
            packed = self.layout == "packed"
            if packed:
                seqs.append(ctx + [t for o in e["options"] for t in o])
                positions.append(
                    list(range(c)) + [c + t for o in e["options"] for t in range(len(o))]
                )
            start = c
            for j, cont in enumerate(e["options"]):
                if not packed:
                    seqs.append(ctx + list(cont))
                    positions.append(list(range(c + len(cont))))
                    start = c
                row = len(seqs) - 1
                pos = [c - 1] + [start + t for t in range(len(cont) - 1)]
                if j == e["label"]:
                    gold.append(len(opts))
                    full.append((row, list(range(c - 1)) + pos, ctx[1:] + list(cont)))
                opts.append((row, pos, list(cont)))
                divisor.append(e["divisor"][j])
                slot.append(b * self.k + j)
                start += len(cont)
        width = max(len(x) for x in seqs)
        pad = [width - len(x) for x in seqs]
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, x in enumerate(seqs):
            ids[r, pad[r] :] = torch.tensor(x, dtype=torch.long)
            position_ids[r, pad[r] :] = torch.tensor(positions[r], dtype=torch.long)
        if self.layout == "packed":
            attention: torch.Tensor = self._packed_mask(examples, width, pad)
        else:
            attention = (torch.arange(width)[None, :] >= torch.tensor(pad)[:, None]).long()

        def gather(items: list[tuple[int, list[int], list[int]]]) -> list[torch.Tensor]:
            rows = torch.tensor([r for r, _, _ in items], dtype=torch.long)
            n = max(len(p) for _, p, _ in items)
            # padding entries repeat the first position: a valid index wherever it is read
            pos, mask = _padded([[pad[r] + q for q in p] for r, p, _ in items], n)
            pos = torch.where(mask > 0, pos, pos[:, :1])
            tgt, _ = _padded([t for _, _, t in items], n)
            return [rows, pos, tgt, mask]

        opt_row, opt_pos, opt_tgt, opt_mask = gather(opts)
        full_row, full_pos, full_tgt, full_mask = gather(full)
        keep = width - int(opt_pos.min())
        n = len(examples)
        n_answer = float(sum(len(opts[g][2]) for g in gold))
        return {
            "input_ids": ids,
            "attention_mask": attention,
            "position_ids": position_ids,
            "opt_row": opt_row,
            "opt_pos": opt_pos,
            "opt_tgt": opt_tgt,
            "opt_mask": opt_mask,
            "divisor": torch.tensor(divisor, dtype=torch.float32),
            "slot": torch.tensor(slot, dtype=torch.long),
            "gold_opt": torch.tensor(gold, dtype=torch.long),
            "full_row": full_row,
            "full_pos": full_pos,
            "full_tgt": full_tgt,
            "full_mask": full_mask,
            "keep": torch.tensor(keep, dtype=torch.long),
            "option_label": torch.tensor([e["label"] for e in examples], dtype=torch.long),
            "option_mask": _option_mask(examples, self.k),
            "ref_known": torch.tensor([e.get("ref_known", -1) for e in examples]),
            "counts": torch.tensor([n, n_answer, float(full_mask.sum())], dtype=torch.float64),
        }

    @staticmethod
    def _packed_mask(
        examples: Sequence[dict[str, Any]], width: int, pad: list[int]
    ) -> torch.Tensor:
        """Additive [B, 1, W, W] mask: causal within the context, each option on the context
        and its own earlier tokens; every position sees itself (pads stay finite)."""
        import torch

        seg = torch.full((len(examples), width), -1, dtype=torch.long)  # -1 pad, 0 ctx, j+1
        for b, e in enumerate(examples):
            at = pad[b] + len(e["context"])
            seg[b, pad[b] : at] = 0
            for j, cont in enumerate(e["options"]):
                seg[b, at : at + len(cont)] = j + 1
                at += len(cont)
        q, k = seg[:, :, None], seg[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
        allowed = causal & (k >= 0) & ((k == 0) | (k == q)) & (q >= 0)
        allowed |= torch.eye(width, dtype=torch.bool)[None]
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
        return mask[:, None]


def balance_letters(task: Task, seed: int = 0) -> Task:
    """``task`` with each labelled question's options permuted so the answer letters are balanced.

    Questions are visited in a seeded order; the i-th labelled question with K options gets its
    answer moved to position ``i mod K`` (the other options keep their relative order), so over
    the task every letter is the answer equally often (±1). Unlabelled questions are unchanged.
    Deterministic in ``seed``.
    """
    from llmcal.models.cape import permute_question

    order = np.random.default_rng(seed).permutation(len(task))
    seen: dict[int, int] = {}
    out = list(task)
    for i in order:
        q = task[int(i)]
        if q.answer is None:
            continue
        k = len(q.choices)
        target = seen.get(k, 0) % k
        seen[k] = seen.get(k, 0) + 1
        rest = [j for j in range(k) if j != q.answer]
        perm = [*rest[:target], q.answer, *rest[target:]]
        out[int(i)] = permute_question(q, perm)
    return Task(task.name, out, task.metadata)
