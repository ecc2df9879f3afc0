"""Fine-tuning methods and their settings (no torch import: the CLI validates with this)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from llmcal.errors import ConfigError

BaseLoss = Literal["option", "completion", "full"]
BASE_LOSSES: tuple[str, ...] = ("option", "completion", "full")

#: method → (base loss, regulariser or None, gated by CogCalib)
METHODS: dict[str, tuple[BaseLoss, str | None, bool]] = {
    "sft": ("option", None, False),
    "ls": ("option", "ls", False),
    "mbls": ("option", "mbls", False),
    "ecp": ("option", "ecp", False),
    "cogcalib-ls": ("option", "ls", True),
    "cogcalib-mbls": ("option", "mbls", True),
    "cogcalib-ecp": ("option", "ecp", True),
    "cft": ("completion", None, False),
    "rcft": ("full", "ece", False),
}

#: Default weight of the calibration term per regulariser (cogcalib.md §3; cft_rcft.md λ = 1).
#: LS: α = ε/(1 − ε) with ε = 0.1, the additive form of classic label smoothing.
DEFAULT_ALPHA: dict[str, float] = {"ls": 0.1 / 0.9, "mbls": 0.1, "ecp": 0.1, "ece": 1.0}
#: The authors' RCFT trainer default α in (1 − α)·L_SFT + α·1e-3·L_ECE (cft_rcft.md §2.2, §3).
CODE_ALPHA = 0.5

#: Learning-rate schedules (names of transformers' ``lr_scheduler_type``).
SCHEDULERS: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)

_CFT_COMMON: dict[str, Any] = {
    # cft_rcft.md §3: LoRA r / alpha / dropout / bias = 128 / 64 / 0.05 / none, all linear
    # layers; adamw, warmup_ratio 0.1, cosine; 5 epochs; batch 2 per device × 2 GPUs = 4;
    # max length 2048; seed 42. Learning rate: §7.10 resolution, 5e-5. Text format: §4.1
    # (the "cft" template), letter token chosen by where the model puts mass (§7.8).
    "lora_r": 128,
    "lora_alpha": 64,
    "lora_dropout": 0.05,
    "lora_targets": ["all-linear"],
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "adam_epsilon": 1e-8,
    "warmup_ratio": 0.1,
    "scheduler": "cosine",
    "epochs": 5.0,
    "batch_size": 2,
    "grad_accum": 2,
    "max_length": 2048,
    "seed": 42,
    "template": "cft",
    "letter_sep": "auto",
}

#: Named settings from the specs (``--preset NAME``); explicit options override them.
PRESETS: dict[str, dict[str, Any]] = {
    # cft_rcft.md §2.1: CFT = completion-only SFT1, no ECE term (§7.2: α = 0).
    "cft-paper": {**_CFT_COMMON, "method": "cft"},
    # cft_rcft.md §2.2 paper version: L_SFT2 (full sequence) + λ·L_ECE with λ = 1; §7.4
    # batch-mean weighting, §7.5 E-step every epoch, §7.6 detached targets.
    "rcft-paper": {
        **_CFT_COMMON,
        "method": "rcft",
        "base_loss": "full",
        "alpha": 1.0,
        "ece_weighting": "batch",
        "e_step_every": None,
    },
    # cft_rcft.md §2.2 [code]: (1 − α)·L_SFT1 + α·1e-3·L_ECE, α = 0.5, 1/n_m over the
    # whole-training-set counts, per device; the E-step once before training.
    "rcft-code": {
        **_CFT_COMMON,
        "method": "rcft",
        "base_loss": "completion",
        "alpha": 0.5,
        "ece_weighting": "code",
        "e_step_every": 0,
    },
    # cogcalib.md §3 [design] defaults (BLoB protocol): LoRA r = 8, lora_alpha = 16, dropout 0,
    # q_proj, v_proj and lm_head; AdamW lr 1e-4, weight decay 0, eps 1e-6, linear, 6 % warm-up;
    # 5,000 steps, batch 4, max length 300; α LS 0.1; style adaptation 100–200 steps (100);
    # threshold refresh every 500 steps or every epoch, whichever first; seeds 1, 2, 3 (1).
    # §7.1: reference labels from the current model; §7.2: D_cal ~10 % of train.
    "cogcalib-paper": {
        "method": "cogcalib-ls",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_targets": ["q_proj", "v_proj", "lm_head"],
        "learning_rate": 1e-4,
        "weight_decay": 0.0,
        "adam_epsilon": 1e-6,
        "warmup_ratio": 0.06,
        "scheduler": "linear",
        "max_steps": 5000,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 300,
        "alpha": 0.1,
        "style_steps": 100,
        "refresh_every": None,
        "refresh_max_steps": 500,
        "gate_reference": "current",
        "seed": 1,
    },
}


def from_preset(name: str | None, **overrides: Any) -> FinetuneConfig:
    """FinetuneConfig of preset ``name`` (or the defaults), with ``overrides`` on top."""
    if name is not None and name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[name]) if name else {}
    values.update(overrides)
    if "max_steps" in overrides and "epochs" not in overrides:
        values.pop("epochs", None)
    if "epochs" in overrides and "max_steps" not in overrides:
        values.pop("max_steps", None)
    return FinetuneConfig(**values, preset=name, overrides=sorted(overrides))


@dataclass
class FinetuneConfig:
    """Everything that defines one fine-tuning run besides the model and the data."""

    method: str = "sft"
    base_loss: str | None = None  # None: the method's default
    alpha: float | None = None  # weight of L_cal (λ for RCFT); None: DEFAULT_ALPHA
    margin: float = 10.0  # MbLS margin m
    # CogCalib
    style_steps: int | None = None  # plain-CE steps before t0; None: 5 % of the steps (≥ 1)
    #: threshold refresh: None = at every epoch end and after ``refresh_max_steps`` steps since
    #: the last fit, whichever comes first (cogcalib.md §3, §7.3); N = every N steps only
    refresh_every: int | None = None
    refresh_max_steps: int = 500
    gate_reference: Literal["current", "initial"] = "current"
    # RCFT
    #: "batch": L_SFT + λ·mean_i err_i over the global batch (cft_rcft.md §7.4);
    #: "code": the authors' (1 − α)·L_SFT + α·1e-3·Σ_i err_i / n_m, per device (α default 0.5)
    ece_weighting: Literal["batch", "code"] = "batch"
    e_step_every: int | None = None  # steps between E-steps; None: every epoch; 0: once only
    ece_only: bool = False  # RCFT ablation: drop the SFT term, keep only the L_ECE term
    # completion / full SFT
    sft_label_smoothing: float = 0.0  # full-vocabulary ε on SFT tokens (HF label_smoothing_factor)
    # LoRA and optimiser
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    max_length: int | None = None
    #: permute each training question's options so every answer letter is equally frequent
    #: (seeded); without it a letter SFT can learn the label prior instead of the task
    balance_letters: bool = False
    seed: int = 0
    #: letter: the K option-letter logits after the prompt (the papers' format); cloze: each
    #: option's continuation log-likelihood, divided as ``normalization`` says (as
    #: ``llmcal score --mode cloze``): a K-way softmax over options, K rows per question
    mode: Literal["letter", "cloze"] = "letter"
    normalization: Literal["sum", "mean", "char"] = "mean"
    #: cloze batches: "packed" (one row per question, a 4-D mask), "rows" (one per option) or
    #: "auto" (packed where the attention allows it); the numbers are the same
    cloze_layout: Literal["auto", "packed", "rows"] = "auto"
    template: str = "daca1"
    #: option-letter token after ``Answer:`` for the cft template: "auto" = the variant (bare
    #: "A" or " A") the model puts more mass on (cft_rcft.md §7.8), "bare" or "space"
    letter_sep: Literal["auto", "bare", "space"] = "auto"
    logging_steps: int = 5
    #: the named preset the run started from, and the fields set explicitly on top of it
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.base_loss is not None and self.base_loss not in BASE_LOSSES:
            raise ConfigError(f"base loss must be one of {', '.join(BASE_LOSSES)}")
        if self.alpha is not None and self.alpha < 0:
            raise ConfigError(f"--alpha must be >= 0, got {self.alpha}")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}")
        for name in ("style_steps", "refresh_every", "e_step_every"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "refresh_every" else 0):
                raise ConfigError(f"{name.replace('_', '-')} out of range: {value}")
        if self.refresh_max_steps < 1:
            raise ConfigError(f"refresh-max-steps must be >= 1, got {self.refresh_max_steps}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.weight_decay < 0 or not self.adam_epsilon > 0:
            raise ConfigError("weight-decay must be >= 0 and adam-eps > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}"
            )
        if self.mode not in ("letter", "cloze"):
            raise ConfigError(f"mode must be 'letter' or 'cloze', got {self.mode!r}")
        if self.normalization not in ("sum", "mean", "char"):
            raise ConfigError(
                f"normalization must be 'sum', 'mean' or 'char', got {self.normalization!r}"
            )
        if self.cloze_layout not in ("auto", "packed", "rows"):
            raise ConfigError("cloze layout must be 'auto', 'packed' or 'rows'")
        if self.letter_sep not in ("auto", "bare", "space"):
            raise ConfigError("letter sep must be 'auto', 'bare' or 'space'")
        if self.ece_only and self.regulariser != "ece":
            raise ConfigError("--ece-only is the RCFT ablation: use it with --method rcft")
        if (
            self.regulariser == "ece"
            and self.ece_weighting == "code"
            and self.alpha is not None
            and self.alpha > 1
        ):
            raise ConfigError(
                f"--alpha {self.alpha}: with --ece-weighting code the loss is "
                "(1 − α)·L_SFT + α·1e-3·L_ECE, so α must be in [0, 1]"
            )
        if not 0 <= self.sft_label_smoothing < 1:
            raise ConfigError("sft label smoothing must be in [0, 1)")
        if self.gate_reference not in ("current", "initial"):
            raise ConfigError("gate reference must be 'current' or 'initial'")
        if self.ece_weighting not in ("batch", "code"):
            raise ConfigError("ece weighting must be 'batch' or 'code'")

    @property
    def loss(self) -> str:
        """The base loss actually used."""
        return self.base_loss or METHODS[self.method][0]

    @property
    def regulariser(self) -> str | None:
        """ls, mbls, ecp, ece (RCFT) or None."""
        return METHODS[self.method][1]

    @property
    def gated(self) -> bool:
        """True for the CogCalib methods."""
        return METHODS[self.method][2]

    @property
    def weight(self) -> float:
        """α (or RCFT's λ; the code-mode α) actually used."""
        reg = self.regulariser
        if reg is None:
            return 0.0
        if self.alpha is not None:
            return self.alpha
        if reg == "ece" and self.ece_weighting == "code":
            return CODE_ALPHA
        return DEFAULT_ALPHA[reg]

    @property
    def sft_weight(self) -> float:
        """Coefficient of the SFT term: 0 for the ECE-only ablation, 1 − α in code mode."""
        if self.ece_only:
            return 0.0
        if self.regulariser == "ece" and self.ece_weighting == "code":
            return 1.0 - self.weight
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the resolved loss and weight."""
        return {
            **asdict(self),
            "resolved_loss": self.loss,
            "resolved_weight": self.weight,
            "resolved_sft_weight": self.sft_weight,
        }
