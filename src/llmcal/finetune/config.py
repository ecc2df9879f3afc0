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


@dataclass
class FinetuneConfig:
    """Everything that defines one fine-tuning run besides the model and the data."""

    method: str = "sft"
    base_loss: str | None = None  # None: the method's default
    alpha: float | None = None  # weight of L_cal (λ for RCFT); None: DEFAULT_ALPHA
    margin: float = 10.0  # MbLS margin m
    # CogCalib
    style_steps: int | None = None  # plain-CE steps before t0; None: 5 % of the steps (≥ 1)
    refresh_every: int | None = None  # threshold refresh interval; None: once per epoch
    gate_reference: Literal["current", "initial"] = "current"
    # RCFT
    ece_weighting: Literal["batch", "code"] = "batch"
    e_step_every: int | None = None  # steps between E-steps; None: every epoch
    # completion / full SFT
    sft_label_smoothing: float = 0.0  # full-vocabulary ε on SFT tokens (HF label_smoothing_factor)
    # LoRA and optimiser
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
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
    template: str = "daca1"
    logging_steps: int = 5

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
            if value is not None and value < (0 if name == "style_steps" else 1):
                raise ConfigError(f"{name.replace('_', '-')} out of range: {value}")
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
        """α (or RCFT's λ) actually used."""
        reg = self.regulariser
        if reg is None:
            return 0.0
        return DEFAULT_ALPHA[reg] if self.alpha is None else self.alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the resolved loss and weight."""
        return {**asdict(self), "resolved_loss": self.loss, "resolved_weight": self.weight}
