"""CalibrationTrainer: a thin ``transformers.Trainer`` subclass with the llmcal losses.

Exactness: every loss is a sum of per-example (or per-token) terms divided by the *global*
count of examples (tokens) in the optimizer step — all micro-batches of the gradient
accumulation window on all processes, counted in :meth:`get_batch_samples` and all-reduced.
The local loss is multiplied by the world size because DDP averages gradients. So the loss
and the gradients do not depend on the gradient accumulation or the number of processes.
The only batch-level statistics (CogCalib's threshold, RCFT's bin accuracies) are global
constants between refreshes, computed over whole datasets.

Where this differs from the authors' released RCFT code (cft_rcft.md; CogCalib has no code):

* the answer letter is tokenised as HFScorer scores it and appended explicitly, and its logits
  are read at the last prompt position (the code's ``"### Answer:{L}"`` can merge ":A" into
  one token, so its position −2 may score the wrong token; §7.8);
* RCFT's base loss is the full-sequence SFT2 of the paper (the code uses completion-only SFT1);
* the E-step is re-run every epoch (or every N steps) by a callback (the code runs it once:
  ``e_step_every=0``);
* the targets are detached (EM), K comes from each question (the code hard-codes K − 1 = 3),
  and an empty bin takes the nearest non-empty bin's accuracy (the code's ``nan_to_num`` gives
  0; see :mod:`llmcal.finetune.losses`);
* L_ECE is a per-example mean with λ = 1 (the code's 1/n_m over dataset counts times α·1e-3
  makes the term ~1e-5 of the SFT loss). ``ece_weighting="code"`` reproduces the code's
  objective exactly instead: (1 − α)·L_SFT + α·1e-3·Σ_{i∈B} err_i / n_m(i), α = 0.5, where
  L_SFT is the mean over the micro-batch's SFT tokens and B the micro-batch *on one device*;
  under DDP (and gradient accumulation) the micro-batch losses are averaged, as the HF Trainer
  the authors use does. That objective is not invariant to the batch layout, by design;
* ``ece_only`` drops the SFT term (the §6.3 ECE-only ablation) in either weighting;
* epochs are the Trainer's own (the code calls ``super().train()`` once per epoch: 5 × 5 passes).

CogCalib's spec puts LoRA on ``lm_head`` too, and so does ``--preset cogcalib-paper``; the plain
defaults leave it out because both bundled models tie it to the input embeddings, which a
merged adapter would then change too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llmcal.finetune import losses as L
from llmcal.finetune.config import FinetuneConfig
from llmcal.progress import progress

DIAG_KEYS = (
    "n",
    "correct",
    "conf",
    "known",
    "known_correct",
    "known_conf",
    "unknown_correct",
    "unknown_conf",
    "ref_known",
    "ref_known_correct",
    "ref_known_conf",
    "ref_unknown",
    "ref_unknown_correct",
    "ref_unknown_conf",
)


def _length(example: dict[str, Any]) -> int:
    """Tokens of an encoded example (letter: the sequence; cloze: context + longest option)."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return len(example["context"]) + max(len(c) for c in example["options"])


class ListDataset(torch.utils.data.Dataset):
    """A map-style dataset over a list of encoded examples."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


class CalibrationTrainer(Trainer):
    """Trainer whose loss is the llmcal objective of ``ft_config`` (see module docstring)."""

    loss_is_scaled_for_ga = True  # compute_loss normalises by the global counts itself

    def __init__(
        self,
        *args: Any,
        ft_config: FinetuneConfig,
        option_ids: Sequence[int] | None,
        k: int | None = None,
        cal_dataset: ListDataset | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ft = ft_config
        #: letter mode: the option-letter token ids; None: cloze mode with ``k`` options
        self.option_ids = (
            None if option_ids is None else torch.tensor(list(option_ids), dtype=torch.long)
        )
        if option_ids is None and k is None:
            raise ValueError("cloze mode needs k (the number of options)")
        self.k = len(option_ids) if option_ids is not None else int(k or 0)
        self.cal_dataset = cal_dataset
        self.threshold: float | None = None  # CogCalib t; None during style adaptation
        self.initial_known: torch.Tensor | None = None  # D_cal correctness of the initial model
        self.bin_counts: torch.Tensor | None = None  # RCFT E-step n_m (whole training set)
        self.bin_acc: torch.Tensor | None = None  # RCFT E-step acc_m
        self.show_progress = True  # progress lines of the whole-dataset passes (rank 0 only)
        self.gate_history: list[dict[str, float]] = []
        self.e_step_history: list[dict[str, Any]] = []
        self.diagnostics: list[dict[str, float]] = []
        self.schedule: dict[str, Any] = {}
        self.timings: dict[str, list[float]] = {"step": [], "e_step": [], "threshold": []}
        self._counts = torch.zeros(3, dtype=torch.float64)  # examples, answer tokens, seq tokens
        self._n_micro = 1  # micro-batches in the current accumulation window (this process)
        self._diag = torch.zeros(len(DIAG_KEYS), dtype=torch.float64)

    # -- global normalisation ------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """Number of data-parallel processes."""
        return int(self.accelerator.num_processes)

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        out = t.to(self.args.device, torch.float64)
        torch.distributed.all_reduce(out)
        return out.cpu()

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], torch.Tensor | int | None]:
        """Fetch the accumulation window and count examples / tokens over all processes."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = torch.zeros(3, dtype=torch.float64)
        for b in batches:
            local += b["counts"].cpu().double()  # examples, answer tokens, sequence tokens
        self._counts = self._all_sum(local)
        self._n_micro = max(1, len(batches))
        return batches, torch.tensor(float(self._counts[0]), device=device)

    # -- forward passes ------------------------------------------------------------------------
    def _forward(self, model: Any, inputs: dict[str, torch.Tensor], keep: int) -> torch.Tensor:
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            logits_to_keep=keep,
            use_cache=False,
        )
        return out.logits

    def option_scores(
        self, model: Any, inputs: dict[str, torch.Tensor], sft: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Option logits z [B, K] (float32) and, if ``sft`` is "completion" or "full", the
        summed token CE of the answer tokens / of every real token of the gold sequence
        (float64, label-smoothed by ``sft_label_smoothing``)."""
        eps = self.ft.sft_label_smoothing
        if self.option_ids is not None:  # letter mode: one forward, logits at the answer
            logits = self._forward(model, inputs, 0 if sft == "full" else 2)
            rows = torch.arange(logits.shape[0], device=logits.device)
            at = inputs["answer_pos"] - (inputs["input_ids"].shape[1] - logits.shape[1])
            answer_logits = logits[rows, at]
            z = answer_logits.index_select(-1, self.option_ids.to(logits.device)).float()
            if sft == "completion":
                one = torch.ones_like(z[:, :1])
                tok = L.token_ce_sum(
                    answer_logits[:, None], inputs["answer_token"][:, None], one, eps
                )
                return z, tok.sum()
            if sft == "full":
                am = inputs["attention_mask"]
                weight = (am[:, 1:] * am[:, :-1]).float()
                ids = inputs["input_ids"]
                return z, L.token_ce_sum(logits[:, :-1], ids[:, 1:], weight, eps).sum()
            return z, None
        # cloze mode: gather the positions predicting each option's tokens (ClozeCollator)
        ids = inputs["input_ids"]
        logits = self._forward(model, inputs, 0 if sft == "full" else int(inputs["keep"]))
        shift = ids.shape[1] - logits.shape[1]  # absolute position → kept column
        pred = logits[inputs["opt_row"][:, None], inputs["opt_pos"] - shift].float()  # R, M, V
        target, mask = inputs["opt_tgt"], inputs["opt_mask"]
        token_lp = pred.gather(-1, target[..., None])[..., 0] - torch.logsumexp(pred, -1)
        score = (token_lp * mask).sum(-1) / inputs["divisor"]
        n, k = inputs["option_label"].shape[0], inputs["option_mask"].shape[1]
        z = torch.zeros(n * k, dtype=score.dtype, device=score.device)
        z = z.index_copy(0, inputs["slot"], score).view(n, k)
        if sft == "completion":
            gold = inputs["gold_opt"]
            return z, L.token_ce_sum(pred[gold], target[gold], mask[gold], eps).sum()
        if sft == "full":
            rows, pos = inputs["full_row"][:, None], inputs["full_pos"]
            tok = L.token_ce_sum(logits[rows, pos], inputs["full_tgt"], inputs["full_mask"], eps)
            return z, tok.sum()
        return z, None

    @torch.no_grad()
    def dataset_option_logits(
        self, dataset: ListDataset, shard: bool = False, desc: str = "scoring option logits"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Option logits, labels and option masks of a dataset under the current weights.

        With ``shard`` each process takes every world_size-th example (callers all-reduce).
        """
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        idx = list(range(len(dataset)))
        if shard:
            idx = idx[self.accelerator.process_index :: self.world_size]
        collate = self.data_collator
        zs, ys, ms = [], [], []
        bs = self.args.per_device_train_batch_size
        order = sorted(idx, key=lambda i: -_length(dataset[i]))
        shown = self.show_progress and self.is_world_process_zero()
        with progress(len(order), f"{desc} (step {self.state.global_step})", enabled=shown) as bar:
            for start in range(0, len(order), bs):
                batch = collate([dataset[i] for i in order[start : start + bs]])
                batch = {k: v.to(self.args.device) for k, v in batch.items()}
                z, _ = self.option_scores(model, batch)
                zs.append(z.float().cpu())
                ys.append(batch["option_label"].cpu())
                ms.append(batch["option_mask"].cpu())
                bar.update(len(order[start : start + bs]))
        if was_training:
            model.train()
        k = self.k
        if not zs:
            return torch.zeros(0, k), torch.zeros(0, dtype=torch.long), torch.zeros(0, k).bool()
        return torch.cat(zs), torch.cat(ys), torch.cat(ms)

    # -- CogCalib ------------------------------------------------------------------------------
    def fit_threshold(self) -> float:
        """Refit t by Youden's J on D_cal (every process computes the same whole-D_cal value)."""
        if self.cal_dataset is None:
            raise ValueError("CogCalib needs a calibration split")
        start = time.perf_counter()
        z, y, m = self.dataset_option_logits(self.cal_dataset, desc="gating pass on the cal split")
        nll = L.option_nll(z, y, m)
        current = z.masked_fill(~m, float("-inf")).argmax(-1) == y
        known = current
        if self.ft.gate_reference == "initial" and self.initial_known is not None:
            known = self.initial_known
        t = L.youden_threshold(nll, known)
        self.threshold = t
        gated = nll <= t
        self.gate_history.append(
            {
                "step": float(self.state.global_step),
                "threshold": t,
                "cal_share_known": float(gated.float().mean()),
                "cal_agreement": float((gated == known).float().mean()),
                "cal_accuracy": float(current.float().mean()),
            }
        )
        self.timings["threshold"].append(time.perf_counter() - start)
        return t

    def record_initial_known(self) -> None:
        """D_cal correctness of the model before training (gate_reference="initial")."""
        if self.cal_dataset is not None:
            z, y, m = self.dataset_option_logits(
                self.cal_dataset, desc="initial correctness on the cal split"
            )
            self.initial_known = z.masked_fill(~m, float("-inf")).argmax(-1) == y

    # -- RCFT ----------------------------------------------------------------------------------
    def e_step(self) -> None:
        """Bin counts and accuracies over the whole training set, no gradient (all-reduced)."""
        dataset = self.train_dataset
        assert isinstance(dataset, ListDataset)
        start = time.perf_counter()
        z, y, m = self.dataset_option_logits(
            dataset, shard=True, desc="E-step over the train split"
        )
        p = torch.softmax(z.masked_fill(~m, float("-inf")), -1)
        counts, hits = L.e_step_stats(p.max(-1).values, (p.argmax(-1) == y).double())
        counts, hits = self._all_sum(counts), self._all_sum(hits)
        self.bin_counts = counts
        self.bin_acc = L.bin_accuracy(counts, hits)
        self.e_step_history.append(
            {
                "step": self.state.global_step,
                "counts": counts.tolist(),
                "accuracy": self.bin_acc.tolist(),
            }
        )
        self.timings["e_step"].append(time.perf_counter() - start)

    # -- the loss ------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """Σ per-example terms / global counts × world size (see module docstring)."""
        ft = self.ft
        counts = self._counts
        code = ft.regulariser == "ece" and ft.ece_weighting == "code"
        if float(counts[0]) == 0 or code:
            # outside the training loop: local normalisation; code: the authors' per-device
            # means (see the module docstring)
            counts = inputs["counts"].cpu().double()
        sft_w = ft.sft_weight
        token_sft = ft.loss if ft.loss != "option" and sft_w > 0 else None
        z, tok = self.option_scores(model, inputs, token_sft)
        y, omask = inputs["option_label"], inputs["option_mask"]
        nll = L.option_nll(z, y, omask)

        if sft_w == 0:
            loss = torch.zeros((), dtype=torch.float64, device=z.device)
        elif tok is None:  # the option CE
            loss = nll.double().sum() / float(counts[0])
        else:  # completion: the answer tokens; full (RCFT's SFT2): every real token after the first
            loss = tok / float(counts[1 if ft.loss == "completion" else 2])
        loss = sft_w * loss

        gate = torch.ones_like(nll)
        reg = ft.regulariser
        if reg in L.REGULARISERS and ft.weight > 0:
            if ft.gated:
                gate = L.known_gate(nll, self.threshold)
            cal = L.regulariser(reg, z, omask, ft.margin)
            loss = loss + ft.weight * (gate * cal).double().sum() / float(counts[0])
        elif reg == "ece" and ft.weight > 0:
            if self.bin_acc is None or self.bin_counts is None:
                raise RuntimeError("RCFT loss before the first E-step")
            probs = torch.softmax(z.masked_fill(~omask, float("-inf")), -1)
            err, b = L.rcft_sample_error(probs, self.bin_acc.to(z.device), omask)
            if code:
                # authors' code: Σ_{i∈B} err_i / n_m(i) over dataset counts, times α·1e-3
                n_m = self.bin_counts.to(z.device, z.dtype)[b]
                loss = loss + L.rcft_code_ece(err, n_m, ft.weight)
            else:
                loss = loss + ft.weight * err.double().sum() / float(counts[0])
        self._accumulate_diagnostics(z.detach(), y, omask, gate, inputs["ref_known"])
        # code: the mean over the window's micro-batches, which DDP then averages over devices;
        # else (float64 sums) × world size, because DDP averages gradients
        loss = loss / self._n_micro if code else loss * self.world_size
        return (loss, {"logits": z}) if return_outputs else loss

    def _accumulate_diagnostics(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        omask: torch.Tensor,
        gate: torch.Tensor,
        ref_known: torch.Tensor,
    ) -> None:
        p = torch.softmax(z.masked_fill(~omask, float("-inf")), -1)
        conf, pred = p.max(-1)
        correct = (pred == y).double()
        conf = conf.double()
        g = gate.double() if self.ft.gated else torch.zeros_like(conf)
        rk = (ref_known == 1).double().to(conf.device)
        ru = (ref_known == 0).double().to(conf.device)
        vals = [
            torch.ones_like(conf).sum(),
            correct.sum(),
            conf.sum(),
            g.sum(),
            (g * correct).sum(),
            (g * conf).sum(),
            ((1 - g) * correct).sum(),
            ((1 - g) * conf).sum(),
            rk.sum(),
            (rk * correct).sum(),
            (rk * conf).sum(),
            ru.sum(),
            (ru * correct).sum(),
            (ru * conf).sum(),
        ]
        self._diag += torch.stack(vals).cpu()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add per-group diagnostics (summed over processes) to the training-loss logs."""
        if "loss" in logs:
            d = dict(zip(DIAG_KEYS, self._all_sum(self._diag.clone()).tolist(), strict=True))
            self._diag.zero_()
            extra = _diagnostics(d, self.ft.gated)
            if self.ft.gated:
                extra["threshold"] = math.nan if self.threshold is None else self.threshold
            self.diagnostics.append({"step": float(self.state.global_step), **extra})
            logs = {**logs, **{k: round(v, 4) for k, v in extra.items()}}
        super().log(logs, start_time)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _diagnostics(d: dict[str, float], gated: bool) -> dict[str, float]:
    """Accuracy and mean confidence overall, per gate group and per reference group."""
    n = d["n"]
    out = {"train_acc": _ratio(d["correct"], n), "train_conf": _ratio(d["conf"], n)}
    if gated:
        out["share_known"] = _ratio(d["known"], n)
        out["known_acc"] = _ratio(d["known_correct"], d["known"])
        out["known_conf"] = _ratio(d["known_conf"], d["known"])
        out["unknown_acc"] = _ratio(d["unknown_correct"], n - d["known"])
        out["unknown_conf"] = _ratio(d["unknown_conf"], n - d["known"])
    if d["ref_known"] or d["ref_unknown"]:
        out["ref_known_acc"] = _ratio(d["ref_known_correct"], d["ref_known"])
        out["ref_known_conf"] = _ratio(d["ref_known_conf"], d["ref_known"])
        out["ref_unknown_acc"] = _ratio(d["ref_unknown_correct"], d["ref_unknown"])
        out["ref_unknown_conf"] = _ratio(d["ref_unknown_conf"], d["ref_unknown"])
    return out


class CogCalibCallback(TrainerCallback):
    """Style adaptation, then the initial threshold and its refreshes.

    ``refresh=None`` (the spec's schedule, cogcalib.md §3 and §7.3): a refit at every epoch
    end and whenever ``max_interval`` steps have passed since the last fit, whichever comes
    first. ``refresh=N``: a refit every N steps after the initial one, nothing else.
    """

    def __init__(
        self,
        trainer: CalibrationTrainer,
        style_steps: int | None,
        refresh: int | None,
        max_interval: int = 500,
    ) -> None:
        self.trainer = trainer
        self.style_steps = style_steps if style_steps is not None else -1
        self.refresh = refresh
        self.max_interval = max_interval
        self._default_style = style_steps is None
        self._last = -1  # step of the last threshold fit

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Resolve the style default (5 % of the steps); reference labels; on resume past
        style adaptation, refit t (the refreshed t is not checkpointed)."""
        if self._default_style:
            self.style_steps = max(1, round(0.05 * state.max_steps))
        schedule: dict[str, Any] = {"style_steps": self.style_steps}
        if self.refresh is None:
            schedule.update(
                refresh="epoch end or max_interval steps", max_interval=self.max_interval
            )
        else:
            schedule["refresh_every"] = self.refresh
        self.trainer.schedule = schedule
        if self.trainer.ft.gate_reference == "initial" and self.trainer.initial_known is None:
            self.trainer.record_initial_known()
        if state.global_step >= self.style_steps:
            self._fit(state)

    def _fit(self, state: TrainerState) -> None:
        self.trainer.fit_threshold()
        self._last = state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Fit t0 when style adaptation ends; then refresh on the schedule."""
        step = state.global_step
        since = step - self.style_steps
        if since < 0 or self._last == step:
            return
        if since == 0:
            self._fit(state)
        elif self.refresh is not None:
            if since % self.refresh == 0:
                self._fit(state)
        elif step - self._last >= self.max_interval:
            self._fit(state)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """The per-epoch refresh of the default schedule (unless t was just fitted, or
        training is over: a fit after the last step would change nothing)."""
        step = state.global_step
        due = self.refresh is None and self.style_steps < step < state.max_steps
        if due and self._last != step:
            self._fit(state)


class EStepCallback(TrainerCallback):
    """RCFT's E-step at the start of every epoch (or every ``every`` steps)."""

    def __init__(self, trainer: CalibrationTrainer, every: int | None) -> None:
        self.trainer = trainer
        self.every = every

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """The first E-step (also after resuming from a checkpoint)."""
        self.trainer.e_step()

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Re-run the E-step each epoch; the authors' code runs it once (cft_rcft.md §7.5)."""
        if self.every is None and state.global_step > 0 and self._not_just_done(state):
            self.trainer.e_step()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Optional step-based schedule (``every=0``: once before training, as the code)."""
        if self.every and state.global_step % self.every == 0:
            self.trainer.e_step()

    def _not_just_done(self, state: TrainerState) -> bool:
        hist = self.trainer.e_step_history
        return not hist or hist[-1]["step"] != state.global_step


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, optimizer), callbacks excluded."""

    def __init__(self, trainer: CalibrationTrainer) -> None:
        self.trainer = trainer
        self._start = 0.0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Stop the clock (runs before the schedule callbacks, which are added after it)."""
        self.trainer.timings["step"].append(time.perf_counter() - self._start)


class StepProgress(TrainerCallback):
    """Optimizer steps as llmcal progress lines (used where tqdm would not draw: not a TTY)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Open the progress over ``state.max_steps`` (from the resumed step on)."""
        if state.is_world_process_zero:
            self.bar = progress(
                state.max_steps, self.desc, unit="steps", initial=state.global_step, nest=False
            ).__enter__()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """One step done."""
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Close it (the final line)."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
