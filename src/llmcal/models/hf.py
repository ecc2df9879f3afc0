"""HFScorer: score multiple-choice tasks with any transformers causal LM.

Loads a bundled alias, a ``.gguf`` file (dequantised by transformers), a local directory or a
hub id, optionally with a PEFT adapter. Two modes:

* ``letter``: one forward pass per question; the next-token logits of the option-letter tokens
  at the answer position (only the last position's logits are computed). The token prefix a
  batch's prompts share (the template's instruction, few-shot examples) is run once per batch.
* ``cloze``: the log-likelihood of each option's text as a continuation of the question, with
  ``sum``, ``mean`` (per token) or ``char`` (per character) normalisation; the question's
  context is run once and its KV cache reused for every option (as a ``past_key_values``
  prefix), so a question costs one context pass plus K short continuation passes.

``score_permuted`` scores letter-mode prompts whose options are shown in several orders (CAPE):
the token prefix all orders of a question share (instruction, passage, question) is run once and
its KV cache continued with each order's option list, so K orders cost far less than K passes.

Batches are length-sorted and left-padded with explicit position ids, so a padded row computes
exactly what it would alone (up to float rounding).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcal.errors import ConfigError, ModelError
from llmcal.models.base import (
    Mode,
    Normalization,
    build_scores,
    check_request,
)
from llmcal.models.bundled import BUNDLED, resolve_bundled
from llmcal.scores import Scores
from llmcal.tasks.templates import DEFAULT_TEMPLATE, Template
from llmcal.tasks.types import LETTERS, Question, Task

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: ``kind`` is alias, gguf, directory or hub."""

    kind: str
    location: str
    gguf_file: str | None = None

    @property
    def location_path(self) -> Path:
        """``location`` as a Path."""
        return Path(self.location)

    @property
    def load_dir(self) -> str:
        """The first argument to ``from_pretrained``."""
        return str(Path(self.location).parent) if self.gguf_file else self.location


def resolve_model(model: str) -> ModelSource:
    """Interpret ``model`` as a bundled alias, a .gguf file, a local directory or a hub id."""
    gguf = resolve_bundled(model)
    if gguf is not None:
        return ModelSource("alias", str(gguf), gguf.name)
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is a directory but has no config.json; point --model at a transformers "
                "model directory (save_pretrained output) or a .gguf file"
            )
        return ModelSource("directory", str(path.resolve()))
    if path.exists() or model.startswith((".", "/", "~")):
        raise ModelError(f"model path {model!r} is neither a .gguf file nor a model directory")
    if model.count("/") > 1 or not model.strip():
        raise ModelError(
            f"{model!r} is not a bundled alias ({', '.join(BUNDLED)}), a local path or a hub id"
        )
    return ModelSource("hub", model)


_DONE = "llmcal-converted.txt"


def cache_root() -> Path:
    """Where converted GGUF models are kept (``LLMCAL_CACHE_DIR`` or ~/.cache/llmcal)."""
    env = os.environ.get("LLMCAL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmcal"


def converted_dir(gguf: Path) -> Path:
    """The cache folder of a GGUF file's dequantised transformers copy (keyed by size, mtime)."""
    st = gguf.stat()
    return cache_root() / "converted" / f"{gguf.stem}-{st.st_size}-{st.st_mtime_ns}"


def pick_device(device: str) -> str:
    """``auto`` → cuda when available, else cpu."""
    import re

    import torch

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?", device):
        raise ConfigError(f"unknown device {device[:40]!r}; use auto, cpu, cuda, cuda:N or mps")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda:") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if int(device[5:]) >= n:
            raise ConfigError(
                f"device {device!r}: this machine has {n} CUDA device(s) (0..{n - 1})"
            )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` → bfloat16 on a bf16-capable GPU, float32 otherwise."""
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, {', '.join(names)}")
    return names[dtype]


def _is_pickle_refusal(exc: BaseException) -> bool:
    """True for torch.load's weights_only refusal of a pickled checkpoint (.bin)."""
    text = f"{type(exc).__name__} {exc}"
    return (
        isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text
    )


def _hub_token(env: str | None) -> str | None:
    """The hub token from environment variable ``env`` (None: huggingface_hub reads HF_TOKEN)."""
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ConfigError(
            f"--hub-token-env {env}: the environment variable {env} is not set or empty; "
            f"export {env}=<your token> (or leave the flag out to use HF_TOKEN)"
        )
    return value


def length_batches(lengths: Sequence[int], max_items: int) -> Iterator[list[int]]:
    """Index batches of at most ``max_items``, longest first (padding waste is minimal)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), max_items):
        yield order[start : start + max_items]


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence transformers' ``is_gradient_checkpointing`` FutureWarning, which PEFT's model
    wrapper raises on every construction: not the user's call, and printed once per adapter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        yield


def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids (0 at each row's first real token) of
    ``seqs`` left-padded with ``pad_id`` to the longest."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def cloze_divisor(n_tokens: int, n_chars: int, how: Normalization) -> float:
    """What a continuation's summed log-probability is divided by: 1 (``sum``), its token
    count (``mean``) or its length in characters (``char``, lm-eval's ``acc_norm``)."""
    if how == "sum":
        return 1.0
    if how == "mean":
        return float(n_tokens)
    return float(max(1, n_chars))


SHARED_PREFIX_MIN = 8  # tokens a batch must share before they are run once for all rows


def _common_prefix_len(seqs: Sequence[Sequence[int]], keep_last: int = 0) -> int:
    """Length of the token prefix all ``seqs`` share, leaving each at least ``keep_last`` tokens."""
    n = min(len(x) for x in seqs) - keep_last
    first = seqs[0]
    for other in seqs[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


@dataclass
class SharedPrefix:
    """A token prefix every prompt of a scoring call starts with, run once: its KV cache."""

    length: int
    cache: Any
    mask: Any


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", GGUF de-quantising, shard writing)
    while llmcal loads a model: llmcal reports its own progress, and in logs those bars are
    noise."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class HFScorer:
    """Score tasks with a transformers causal LM (see module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        adapter: str | os.PathLike[str] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        trust_remote_code: bool = False,
        progress: bool | None = None,
        convert_cache: bool = True,
        revision: str | None = None,
        device_map: str | None = None,
        attn_implementation: str | None = None,
        hub_token_env: str | None = None,
        load_in: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if load_in not in (None, "8bit", "4bit"):
            raise ConfigError(f"load_in must be 8bit or 4bit, got {load_in!r}")
        import torch

        self.revision = revision
        self.device_map = device_map
        self.attn_implementation = attn_implementation
        self.load_in = load_in
        # the token stays in this local: never on self, in meta, or in a message
        token = _hub_token(hub_token_env)

        self.name = model
        self.source = resolve_model(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.progress = progress
        self.adapter = None if adapter is None else str(adapter)
        self._adapter_mode_checked = False  # the trained-vs-scored mode warning, once
        self.convert_cache = convert_cache
        self.tokenizer, self.model = self._load(trust_remote_code, token)
        if device_map is not None or load_in is not None:
            # placed by accelerate: inputs go where the embeddings are
            self.device = str(self.model.get_input_embeddings().weight.device)
        self._torch = torch
        # Option logits are read in float32 whatever the weights' dtype: with bfloat16 weights
        # the lm-head output is rounded to 8 bits of mantissa (exact ties, up to 0.25 logit
        # error at |logit| ~ 60). The head rows that are read are recomputed in float32 from
        # the hidden state the head receives (captured by a pre-hook).
        self._head = self.model.get_output_embeddings()
        self._head_in: Any = None
        self._exact_head = self.dtype != torch.float32 and isinstance(
            getattr(self._head, "weight", None), torch.Tensor
        )
        if self._exact_head:
            self._head.register_forward_pre_hook(self._capture_head_input)
        self._softcap = getattr(
            getattr(self.model.config, "get_text_config", lambda: self.model.config)(),
            "final_logit_softcapping",
            None,
        )

    # -- loading ----------------------------------------------------------------------------
    def _load(self, trust_remote_code: bool, token: str | None = None) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = self.source
        load_dir = src.load_dir
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if token is not None:
            kwargs["token"] = token
        model_kwargs = self._model_kwargs()
        if src.gguf_file:
            cached = converted_dir(Path(src.location)) if self.convert_cache else None
            if cached is not None and not (cached / _DONE).is_file():
                self._convert(cached)
            if cached is not None:
                load_dir = str(cached)
            else:
                kwargs["gguf_file"] = src.gguf_file
        try:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(load_dir, **kwargs)
                model = AutoModelForCausalLM.from_pretrained(
                    load_dir, dtype=self.dtype, **kwargs, **model_kwargs
                )
        except (OSError, ValueError, ImportError, pickle.UnpicklingError) as exc:
            hint = ""
            if _is_pickle_refusal(exc):
                hint = (
                    " (the weights are a pickle (.bin) that transformers refuses to load safely; "
                    "convert them to .safetensors, e.g. with a trusted Python session: "
                    "model.save_pretrained(dir, safe_serialization=True))"
                )
            elif src.kind == "hub":
                hint = (
                    " (hub ids need network access; offline, pass a local directory, a .gguf "
                    f"file or a bundled alias: {', '.join(BUNDLED)})"
                )
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if token:
                message = message.replace(token, "***")
            raise ModelError(f"could not load model {self.name!r}: {message}{hint}") from None
        if self.adapter is not None:
            model = self._attach_adapter(model)
        if "device_map" not in model_kwargs:
            model = model.to(self.device)  # type: ignore[arg-type]  # transformers types .to oddly
        model.eval()
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok, model

    def _model_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` options of the model only: placement, attention, quantisation."""
        out: dict[str, Any] = {}
        if self.attn_implementation is not None:
            out["attn_implementation"] = self.attn_implementation
        if self.device_map is not None:
            out["device_map"] = self.device_map
        if self.load_in is not None:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ModelError(
                    f"--load-in {self.load_in} needs bitsandbytes, which is not installed: "
                    "pip install bitsandbytes (it quantises on CUDA GPUs)"
                )
            from transformers import BitsAndBytesConfig

            bits = {"load_in_8bit": True} if self.load_in == "8bit" else {"load_in_4bit": True}
            out["quantization_config"] = BitsAndBytesConfig(**bits)
            out.setdefault("device_map", "auto" if self.device == "cpu" else self.device)
        return out

    def _convert(self, target: Path) -> None:
        """Dequantise the GGUF once and save it as a transformers directory (atomically)."""
        import shutil
        import tempfile

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmcal.progress import note

        src = self.source
        note(
            f"converting {Path(src.location).name} to transformers weights (once; cached in {target})"
        )
        try:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(src.load_dir, gguf_file=src.gguf_file)
                model = AutoModelForCausalLM.from_pretrained(
                    src.load_dir, gguf_file=src.gguf_file, dtype="float32"
                )
        except (OSError, ValueError, ImportError) as exc:
            raise ModelError(f"could not read GGUF file {src.location}: {exc}") from exc
        # The weights are already dequantised float32; the GGUF "quantizer" left on the model
        # only blocks save_pretrained.
        setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with quiet_transformers():
                tok.save_pretrained(tmp)
                model.save_pretrained(tmp)
            (tmp / _DONE).write_text(src.location + "\n", encoding="utf-8")
            if target.exists():  # a concurrent conversion finished first
                shutil.rmtree(tmp)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _attach_adapter(self, model: Any) -> Any:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ConfigError("adapters need PEFT: pip install 'llmcal[train]'") from exc
        path = Path(str(self.adapter))
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"{path} is not a PEFT adapter directory (no adapter_config.json)")
        try:
            with quiet_peft():
                return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ModelError(
                f"could not load adapter {path} onto {self.name!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    def _check_adapter_mode(self, mode: Mode, normalization: Normalization) -> None:
        """Warn (once per scorer) when an ``llmcal finetune`` adapter is scored in another mode
        than it was trained in: its numbers are then not the ones it was trained for."""
        if self.adapter is None or self._adapter_mode_checked:
            return
        self._adapter_mode_checked = True
        record = Path(str(self.adapter)) / "llmcal_finetune.json"
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            return  # not an llmcal adapter, or no record: nothing to compare
        trained = meta.get("mode", "letter")
        if not isinstance(trained, str):
            return
        want = trained + (f" ({meta.get('normalization')})" if trained == "cloze" else "")
        got = mode + (f" ({normalization})" if mode == "cloze" else "")
        if want != got:
            from llmcal.errors import LLMCalWarning

            flags = (
                "--mode letter"
                if trained == "letter"
                else (f"--mode cloze --normalization {meta.get('normalization')}")
            )
            warnings.warn(
                f"adapter {self.adapter} was trained in {want} mode but is scored in {got} mode; "
                f"score it with {flags}",
                LLMCalWarning,
                stacklevel=3,
            )

    # -- public API ---------------------------------------------------------------------------
    def score(
        self,
        task: Task,
        *,
        mode: Mode = "letter",
        template: str | Template = DEFAULT_TEMPLATE,
        normalization: Normalization = "mean",
        shots: Sequence[Question] = (),
    ) -> Scores:
        """Score every question of ``task``; see the module docstring for the modes."""
        tmpl = check_request(task, mode, template, normalization, shots)
        self._check_adapter_mode(mode, normalization)
        if mode == "letter":
            rows, extra = self._score_letter(task, tmpl, shots)
        else:
            rows, extra = self._score_cloze(task, tmpl, normalization, shots)
        return build_scores(task, rows, self._meta(mode, tmpl, shots, extra))

    def score_permuted(
        self,
        task: Task,
        orders: Sequence[Sequence[Sequence[int]]],
        *,
        mode: Mode = "letter",
        template: str | Template = DEFAULT_TEMPLATE,
        normalization: Normalization = "mean",
        shots: Sequence[Question] = (),
    ) -> list[Scores]:
        """Letter scores of ``task`` with options shown in several orders, one Scores per round.

        ``orders[i]`` lists the orderings of question ``i`` (``order[j]`` = the original option
        shown at position j); round ``r`` holds, in task order, every question with more than
        ``r`` orderings, permuted by its ``r``-th one. Each round equals ``score`` of the
        permuted questions (up to float rounding), but the prompt prefix the orderings share is
        run once per question.
        """
        from llmcal.models.cape import permute_question

        tmpl = check_request(task, mode, template, normalization, shots)
        if mode != "letter":
            raise ConfigError("option orderings are scored in letter mode (use --mode letter)")
        if len(orders) != len(task) or any(len(o) == 0 for o in orders):
            raise ConfigError("score_permuted needs at least one ordering per question")
        variants = [
            [permute_question(q, o) for o in qo] for q, qo in zip(task, orders, strict=True)
        ]
        prompts = [[self.render_letter(v, tmpl, shots) for v in vs] for vs in variants]
        token_ids = self.option_token_ids(
            prompts[0][0], tmpl.answer_sep, task.max_choices, tmpl.chat
        )
        groups: list[tuple[list[int], list[list[int]]]] = []
        for ps in prompts:
            encoded = [self._encode(p, tmpl.chat) for p in ps]
            n = _common_prefix_len(encoded, keep_last=1)
            groups.append((encoded[0][:n], [e[n:] for e in encoded]))
        torch = self._torch
        index = torch.tensor(token_ids, device=self.device)
        values: list[list[list[float]]] = [[] for _ in task]
        with self._bar(len(task)) as bar:
            for batch in length_batches([len(g[0]) for g in groups], self.batch_size):
                owner = [b for b, i in enumerate(batch) for _ in groups[i][1]]
                suffixes = [suf for i in batch for suf in groups[i][1]]
                with torch.inference_mode():
                    _, cache, mask = self._run_prefixes([groups[i][0] for i in batch], head=False)
                    logits = self._run_on_cache(
                        cache, mask, owner, suffixes, align="left", keep=1, vocab=index
                    )
                opt = logits[:, -1, :].double().cpu().numpy()
                row = 0
                for i in batch:
                    k = len(task[i].choices)
                    for _ in groups[i][1]:
                        values[i].append(opt[row, :k].tolist())
                        row += 1
                bar.update(len(batch))
        result = []
        for r in range(max(len(o) for o in orders)):
            keep = [i for i, o in enumerate(orders) if r < len(o)]
            sub = Task(task.name, [variants[i][r] for i in keep], task.metadata)
            extra = self._letter_extra(token_ids, prompts[keep[0]][r], tmpl)
            meta = self._meta(mode, tmpl, shots, extra)
            result.append(build_scores(sub, [values[i][r] for i in keep], meta))
        return result

    def _meta(
        self, mode: Mode, tmpl: Template, shots: Sequence[Question], extra: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_source": {"kind": self.source.kind, "location": self._public_location()},
            "adapter": self.adapter,
            "backend": "hf",
            "mode": mode,
            "template": tmpl.name,
            "n_shots": len(shots),
            "shot_ids": [s.id for s in shots],
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "batch_size": self.batch_size,
            "head_dtype": "float32",
            **self.loading_options,
            **extra,
        }

    @property
    def loading_options(self) -> dict[str, str]:
        """The loading flags that were set (revision, device map, attention, 8/4-bit); no token."""
        pairs = (
            ("revision", self.revision),
            ("device_map", self.device_map),
            ("attn_implementation", self.attn_implementation),
            ("load_in", self.load_in),
        )
        return {k: v for k, v in pairs if v is not None}

    def _public_location(self) -> str:
        return (
            Path(self.source.location).name if self.source.kind == "alias" else self.source.location
        )

    # -- letter mode --------------------------------------------------------------------------
    def render_letter(self, q: Question, tmpl: Template, shots: Sequence[Question] = ()) -> str:
        """The exact prompt text fed to the model for ``q`` (chat template applied if chat)."""
        if not tmpl.chat:
            return tmpl.letter_prompt(q, shots)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(
                f"model {self.name!r} has no chat template; use a plain template such as daca1"
            )
        text = self.tokenizer.apply_chat_template(
            tmpl.messages(q, shots), add_generation_prompt=True, tokenize=False
        )
        return str(text)

    def encode(self, text: str, chat: bool) -> list[int]:
        """Token ids of ``text`` exactly as the scorer feeds them to the model."""
        return self._encode(text, chat)

    def _encode(self, text: str, chat: bool) -> list[int]:
        # a rendered chat template already holds its special tokens (BOS etc.)
        ids = self.tokenizer(text, add_special_tokens=not chat)["input_ids"]
        return list(ids)

    def option_token_ids(self, prompt: str, sep: str, k: int, chat: bool) -> list[int]:
        """The single token each letter adds after ``prompt`` (e.g. " A"), checked distinct."""
        base = self._encode(prompt, chat)
        ids: list[int] = []
        for letter in LETTERS[:k]:
            full = self._encode(prompt + sep + letter, chat)
            if full[: len(base)] != base or len(full) != len(base) + 1:
                raise ModelError(
                    f"the tokenizer of {self.name!r} does not encode option {sep + letter!r} as one "
                    f"token after the prompt (got {full[len(base) - 1 :]} after {base[-1:]}); "
                    "letter mode needs single-token option letters: try --mode cloze"
                )
            ids.append(full[-1])
        if len(set(ids)) != k:
            raise ModelError(f"option letters map to repeated token ids {ids} for {self.name!r}")
        return ids

    def _score_letter(
        self, task: Task, tmpl: Template, shots: Sequence[Question]
    ) -> tuple[list[list[float]], dict[str, Any]]:
        torch = self._torch
        prompts = [self.render_letter(q, tmpl, shots) for q in task]
        k = task.max_choices
        token_ids = self.option_token_ids(prompts[0], tmpl.answer_sep, k, tmpl.chat)
        encoded = [self._encode(p, tmpl.chat) for p in prompts]
        rows: list[list[float]] = [[] for _ in task]
        index = torch.tensor(token_ids, device=self.device)
        prefix = self._shared_prefix(encoded)
        with self._bar(len(task)) as bar:
            for batch in length_batches([len(e) for e in encoded], self.batch_size):
                logits = self._last_logits([encoded[i] for i in batch], prefix, vocab=index)
                opt = logits.double().cpu().numpy()
                for j, i in enumerate(batch):
                    rows[i] = opt[j, : len(task[i].choices)].tolist()
                bar.update(len(batch))
        return rows, self._letter_extra(token_ids, prompts[0], tmpl)

    def _letter_extra(self, token_ids: list[int], prompt: str, tmpl: Template) -> dict[str, Any]:
        tokens = self.tokenizer.convert_ids_to_tokens(token_ids)
        return {
            "logit_kind": "logits",
            "option_tokens": {
                letter: {"id": int(t), "token": str(s)}
                for letter, t, s in zip(LETTERS, token_ids, tokens, strict=False)
            },
            "answer_sep": tmpl.answer_sep,
            "example_prompt": prompt,
        }

    # -- cloze mode ---------------------------------------------------------------------------
    def encode_cloze(
        self, context: str, continuation: str, chat: bool
    ) -> tuple[list[int], list[int]]:
        """Context and continuation token ids, split as lm-evaluation-harness does.

        Trailing whitespace of the context moves to the continuation; the continuation ids are
        the tail of the jointly encoded text, so tokens are the ones the model would see.
        """
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        whole = self._encode(stripped + continuation, chat)
        ctx = self._encode(stripped, chat)
        cont = whole[len(ctx) :]
        if not cont:
            raise ModelError(f"continuation {continuation!r} encodes to no tokens")
        return ctx, cont

    def cloze_item(
        self, q: Question, tmpl: Template, shots: Sequence[Question] = ()
    ) -> tuple[list[int], list[tuple[list[int], int]]]:
        """One question as cloze mode scores it: the context ids and, per option, the
        continuation ids and the continuation's length in characters."""
        context, conts = tmpl.cloze(q, shots)
        if tmpl.chat:
            context = self.render_letter(
                Question(q.id, q.question, q.choices, context=q.context), tmpl
            )
            conts = [c.lstrip() for c in conts]
        options = []
        ctx_ids: list[int] = []
        for cont in conts:
            ctx_ids, cont_ids = self.encode_cloze(context, cont, tmpl.chat)
            options.append((cont_ids, len(cont)))
        return ctx_ids, options

    def _score_cloze(
        self,
        task: Task,
        tmpl: Template,
        normalization: Normalization,
        shots: Sequence[Question] = (),
    ) -> tuple[list[list[float]], dict[str, Any]]:
        items = [self.cloze_item(q, tmpl, shots) for q in task]
        rows: list[list[float]] = [[] for _ in task]
        prefix = self._shared_prefix([c for c, _ in items])
        with self._bar(len(task)) as bar:
            for batch in length_batches([len(c) for c, _ in items], self.batch_size):
                sums = self._cloze_loglik([items[i] for i in batch], prefix)
                for i, logps in zip(batch, sums, strict=True):
                    rows[i] = [
                        self._normalize(lp, len(cont), n_chars, normalization)
                        for lp, (cont, n_chars) in zip(logps, items[i][1], strict=True)
                    ]
                bar.update(len(batch))
        first_context, first_conts = tmpl.cloze(task[0], shots)
        return rows, {
            "logit_kind": "loglikelihood",
            "normalization": normalization,
            "example_prompt": first_context + first_conts[0],
        }

    def _cloze_loglik(
        self,
        batch: Sequence[tuple[list[int], list[tuple[list[int], int]]]],
        prefix: SharedPrefix | None = None,
    ) -> list[list[float]]:
        """Summed continuation log-probs, the shared context run once per question.

        The contexts go through the model once (left-padded, KV cache kept); the cache is then
        repeated per option and only the continuation tokens are run on top of it. The result
        equals scoring each ``context + continuation`` sequence on its own (up to float
        rounding), at the cost of one context pass per question instead of one per option.
        With ``prefix`` (the task's shared instruction / few-shot examples, already run), only
        each context's remainder is run, on top of a copy of the prefix's cache.
        """
        torch = self._torch
        owner = [i for i, (_, opts) in enumerate(batch) for _ in opts]
        conts = [cont for _, opts in batch for cont, _ in opts]
        with torch.inference_mode():
            if prefix is None:
                last, cache, mask = self._run_prefixes([ctx for ctx, _ in batch])
            else:
                cache = self._fork_cache(prefix.cache)
                rests = [ctx[prefix.length :] for ctx, _ in batch]
                last, mask = self._run_on_cache(
                    cache,
                    prefix.mask,
                    [0] * len(batch),
                    rests,
                    align="left",
                    keep=1,
                    with_mask=True,
                )
                last = last[:, -1, :]
            # the first continuation token is predicted by the context's last position
            first = torch.log_softmax(last.float(), dim=-1)
            totals = first[owner, [c[0] for c in conts]].double()
            if max(len(c) for c in conts) > 1:
                logits = self._run_on_cache(
                    cache, mask, owner, [c[:-1] for c in conts], align="right", keep=0
                )
                logp = torch.log_softmax(logits.float(), dim=-1)
                width = logits.shape[1]
                target = torch.zeros((len(conts), width), dtype=torch.long)
                real = torch.zeros((len(conts), width), dtype=torch.double)
                for r, c in enumerate(conts):
                    target[r, : len(c) - 1] = torch.tensor(c[1:])
                    real[r, : len(c) - 1] = 1.0
                picked = logp.gather(-1, target.to(self.device)[..., None])[..., 0].double()
                totals = totals + (picked * real.to(self.device)).sum(-1)
        flat = totals.cpu().tolist()
        result: list[list[float]] = []
        j = 0
        for _, opts in batch:
            result.append(flat[j : j + len(opts)])
            j += len(opts)
        return result

    def _shared_prefix(self, seqs: Sequence[Sequence[int]]) -> SharedPrefix | None:
        """Run the token prefix all ``seqs`` share once (None when under SHARED_PREFIX_MIN).

        Every sequence keeps at least one token of its own, so its last logits come from its
        own pass. The prefix's KV cache is kept for the whole scoring call and copied per batch
        (``_fork_cache``): few-shot examples are computed once per task, not once per question.
        """
        n = _common_prefix_len(seqs, keep_last=1) if len(seqs) > 1 else 0
        if n < SHARED_PREFIX_MIN:
            return None
        with self._torch.inference_mode():
            _, cache, mask = self._run_prefixes([seqs[0][:n]], head=False)
        return SharedPrefix(n, cache, mask)

    def _fork_cache(self, cache: Any) -> Any:
        """A copy of a KV cache that shares its key/value tensors (they are never written in
        place: a forward pass or ``reorder_cache`` replaces them with new tensors)."""
        import copy

        memo: dict[int, Any] = {}
        for layer in getattr(cache, "layers", ()):
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if tensor is not None:
                    memo[id(tensor)] = tensor
        return copy.deepcopy(cache, memo)

    def _last_logits(
        self,
        seqs: Sequence[Sequence[int]],
        prefix: SharedPrefix | None = None,
        vocab: Any = None,
    ) -> Any:
        """Last-position float32 logits of ``seqs`` (only the vocabulary ids ``vocab`` if given); a prefix they all share (the template's instruction,
        a system prompt, few-shot examples) is run once and its KV cache reused by every row.

        ``prefix``: one already run for the whole task (every row starts with it)."""
        torch = self._torch
        if prefix is None:
            n = _common_prefix_len(seqs, keep_last=1) if len(seqs) > 1 else 0
            if n < SHARED_PREFIX_MIN:
                return self._forward(seqs, keep=1, vocab=vocab)[:, -1, :]
            with torch.inference_mode():
                _, cache, mask = self._run_prefixes([seqs[0][:n]], head=False)
        else:
            n, mask = prefix.length, prefix.mask
            cache = self._fork_cache(prefix.cache)
        with torch.inference_mode():
            logits = self._run_on_cache(
                cache,
                mask,
                [0] * len(seqs),
                [s[n:] for s in seqs],
                align="left",
                keep=1,
                vocab=vocab,
            )
        return logits[:, -1, :].float()

    # -- the lm head in float32 ---------------------------------------------------------------
    def _capture_head_input(self, module: Any, args: tuple[Any, ...]) -> None:
        self._head_in = args[0] if args else None

    def _call(self, vocab: Any = None, head: bool = True, **kwargs: Any) -> tuple[Any, Any]:
        """Run the model: (float32 logits of the kept positions, model output).

        With non-float32 weights the logits (all, or the vocabulary ids ``vocab``) are the lm head
        recomputed in float32 from its input; ``head=False`` skips that (logits unused).
        """
        self._head_in = None
        out = self.model(**kwargs)
        logits = out.logits
        if vocab is not None:
            logits = logits.index_select(-1, vocab)
        if head and self._exact_head and self._head_in is not None:
            exact = self._head_f32(self._head_in, vocab)
            # a head the model post-processes in a way not reproduced here (a logit scale):
            # keep the model's own numbers rather than wrong ones
            tol = 0.1 + 0.02 * logits.float().abs()
            if bool(((exact - logits.float()).abs() <= tol).all()):
                return exact, out
            self._exact_head = False
        return logits.float(), out

    def _head_f32(self, hidden: Any, vocab: Any = None) -> Any:
        """``hidden × W[vocab]ᵀ (+ b)`` in float32, softcapped like the model; chunked over the
        vocabulary so no float32 copy of the whole head is kept."""
        torch = self._torch
        weight, bias = self._head.weight, getattr(self._head, "bias", None)
        h = hidden.float()
        chunks = [vocab] if vocab is not None else None
        if chunks is None:
            step = 16384
            chunks = [
                torch.arange(i, min(i + step, weight.shape[0]), device=weight.device)
                for i in range(0, weight.shape[0], step)
            ]
        parts = []
        for idx in chunks:
            w = weight.index_select(0, idx).float()
            part = h @ w.T
            if bias is not None:
                part = part + bias.index_select(0, idx).float()
            parts.append(part)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self._softcap:
            out = torch.tanh(out / self._softcap) * self._softcap
        return out

    def _run_prefixes(
        self, prefixes: Sequence[Sequence[int]], head: bool = True
    ) -> tuple[Any, Any, Any]:
        """Run left-padded ``prefixes`` keeping the KV cache: (last logits, cache, mask).

        Call inside ``torch.inference_mode()``; ``head=False`` when the logits are not used.
        """
        dev = self.device
        ids, mask, position_ids = self._left_pad(prefixes)
        logits, out = self._call(
            head=head,
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=position_ids.to(dev),
            logits_to_keep=1,
            use_cache=True,
        )
        # transformers >= 5.24 names the cache ``cache``, older ones ``past_key_values``; the
        # continuation pass passes it back under the same name
        self._cache_kw = "cache" if hasattr(out, "cache") else "past_key_values"
        return logits[:, -1, :], getattr(out, self._cache_kw), mask

    def _run_on_cache(
        self,
        cache: Any,
        prefix_mask: Any,
        owner: Sequence[int],
        suffixes: Sequence[Sequence[int]],
        *,
        align: str,
        keep: int,
        vocab: Any = None,
        with_mask: bool = False,
    ) -> Any:
        """Logits of ``suffixes`` run on top of the cached prefixes (suffix r on ``owner[r]``).

        The cache is repeated to one row per suffix. ``align="right"`` pads suffixes on the right
        (logits of every position: ``keep=0``); ``"left"`` pads on the left, so ``keep=1``
        gives every suffix's last position. Positions continue each prefix's own length (pad
        columns inside the mask are skipped). ``with_mask``: also return the attention mask of
        the extended cache, so it can be continued once more.
        """
        torch = self._torch
        dev = self.device
        width = max(len(x) for x in suffixes)
        inp = torch.full((len(suffixes), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(suffixes), width), dtype=torch.long)
        for r, x in enumerate(suffixes):
            cols = slice(0, len(x)) if align == "right" else slice(width - len(x), width)
            inp[r, cols] = torch.tensor(x, dtype=torch.long)
            mask[r, cols] = 1
        rows = torch.tensor(list(owner))
        cache.reorder_cache(rows.to(dev))
        start = prefix_mask.sum(-1)[rows]
        position_ids = start[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([prefix_mask[rows], mask], dim=-1)
        logits, _ = self._call(
            vocab=vocab,
            input_ids=inp.to(dev),
            attention_mask=full_mask.to(dev),
            position_ids=position_ids.to(dev),
            logits_to_keep=keep,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return (logits, full_mask) if with_mask else logits

    @staticmethod
    def _normalize(logp: float, n_tokens: int, n_chars: int, how: Normalization) -> float:
        return logp / cloze_divisor(n_tokens, n_chars, how)

    # -- the forward pass ---------------------------------------------------------------------
    def _left_pad(
        self, seqs: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, attention mask and position ids of left-padded ``seqs``."""
        return left_pad(seqs, self.tokenizer.pad_token_id)

    def _forward(self, seqs: Sequence[Sequence[int]], keep: int, vocab: Any = None) -> torch.Tensor:
        """Float32 logits of the last ``keep`` positions of left-padded ``seqs`` (B × keep × V,
        or × len(vocab))."""
        torch = self._torch
        ids, mask, position_ids = self._left_pad(seqs)
        with torch.inference_mode():
            logits, _ = self._call(
                vocab=vocab,
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=position_ids.to(self.device),
                logits_to_keep=keep,
                use_cache=False,
            )
        return logits

    def _bar(self, total: int) -> Any:
        from llmcal.progress import progress

        return progress(total, f"scoring {self.name}", unit="q", enabled=self.progress)
