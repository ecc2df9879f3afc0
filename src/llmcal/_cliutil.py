"""Parser plumbing of the ``llmcal`` CLI: help formatting, lm-eval flag hints, warnings, limits.

Kept out of :mod:`llmcal.cli` so the command functions stay short; nothing here imports the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, NoReturn

from llmcal.errors import LLMCalWarning

EXIT_USAGE = 2

#: Option spellings that still parse but are not shown in ``--help`` (old names kept working).
HIDDEN_ALIASES = frozenset({"--out"})

#: lm-evaluation-harness flags and what to type in llmcal instead.
LM_EVAL_FLAGS: dict[str, str] = {
    "--model_args": "use --model NAME (a bundled alias, .gguf file, folder or hub id) with "
    "--dtype/--device/--trust-remote-code",
    "--tasks": "use --task NAME[,NAME...] (several tasks: --out-dir DIR)",
    "--num_fewshot": "use --shots N",
    "--batch_size": "use --batch-size N",
    "--output_path": "use --out FILE.parquet (one task) or --out-dir DIR (several)",
    "--log_samples": "not needed: every Scores file keeps each question's option logits",
    "--apply_chat_template": "use --template chat",
    "--trust_remote_code": "use --trust-remote-code",
    "--include_path": "use --task FILE (a JSONL/CSV/Parquet file) or --data-dir DIR",
    "--use_cache": "not needed: llmcal score resumes from the checkpoint beside its output",
    "--gen_kwargs": "not needed: llmcal scores options by log-probability, it does not generate",
    "--fewshot_as_multiturn": "use --shots N (plain letter-mode templates)",
    "--system_instruction": "use --template (see `llmcal list`)",
    "--write_out": "not needed: `llmcal list` shows the templates",
}


def lm_eval_hint(argv: Sequence[str], known: Iterable[str] = ()) -> str | None:
    """A one-line hint when ``argv`` holds an lm-eval flag (or ``--a_b`` for a known ``--a-b``)."""
    options = set(known)
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in LM_EVAL_FLAGS and flag not in options:
            return f"{flag} is an lm-evaluation-harness flag; in llmcal: {LM_EVAL_FLAGS[flag]}"
        dashed = flag.replace("_", "-")
        if flag.startswith("--") and "_" in flag and flag not in options and dashed in options:
            return f"unrecognized option {flag}; llmcal spells it {dashed}"
    return None


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= option_strings(child)
    return found


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (where it has a meaningful one) and hides old aliases."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required and action.option_strings and "required" not in text:
            text += " (required)"
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [s for s in action.option_strings if s not in HIDDEN_ALIASES]
        if shown and len(shown) < len(action.option_strings):
            clone = argparse.Action(shown, action.dest, nargs=action.nargs, metavar=action.metavar)
            clone.choices = action.choices
            return super()._format_action_invocation(clone)
        return super()._format_action_invocation(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors turn lm-eval flags into a one-line hint (exit 2)."""

    #: The argv being parsed (set by :func:`llmcal.cli.main`), scanned for lm-eval flags.
    argv: Sequence[str] = ()
    #: The top-level parser (its option strings say which spellings are llmcal's own).
    root: argparse.ArgumentParser | None = None

    def error(self, message: str) -> NoReturn:
        """Print a hint for lm-eval flags, otherwise argparse's usage + message; exit 2."""
        hint = lm_eval_hint(Parser.argv, option_strings(Parser.root or self))
        if hint is not None:
            self.exit(EXIT_USAGE, f"llmcal: error: {hint}\n")
        super().error(message)


def add_group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """An argument group titled ``title`` (``model``, ``data``, ``output`` …)."""
    return parser.add_argument_group(f"{title} options")


# -- --limit ------------------------------------------------------------------------------------
def limit_type(text: str) -> float:
    """``--limit``: a count N >= 1, or a fraction 0 < x < 1 of the task (as lm-eval)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count N >= 1 or a fraction 0 < x < 1, got {text!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a count N >= 1 or a fraction 0 < x < 1, got {text!r}"
        )
    if value >= 1 and value != int(value):
        raise argparse.ArgumentTypeError(
            f"expected a whole count N >= 1 or a fraction 0 < x < 1, got {text!r}"
        )
    return value


def resolve_limit(limit: float | None, n: int) -> int | None:
    """Questions to keep of ``n``: a fraction rounds up (lm-eval's ``ceil(n * limit)``)."""
    if limit is None:
        return None
    if limit < 1:
        return max(1, math.ceil(n * limit))
    return int(limit)


# -- warnings -----------------------------------------------------------------------------------
@contextlib.contextmanager
def one_line_warnings(stream: IO[str] | None = None) -> Iterator[None]:
    """Show every :class:`LLMCalWarning` as one ``llmcal: warning: …`` line on stderr."""
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, LLMCalWarning):
                text = " ".join(str(message).split())
                print(f"llmcal: warning: {text}", file=stream or sys.stderr, flush=True)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", LLMCalWarning)
        yield


def warn(message: str) -> None:
    """Issue an :class:`LLMCalWarning` (shown as ``llmcal: warning: MESSAGE``)."""
    warnings.warn(message, LLMCalWarning, stacklevel=2)


def hf_loading(args: argparse.Namespace) -> dict[str, Any]:
    """HFScorer loading options from the --revision … --load-in flags."""
    return {
        "revision": args.revision,
        "device_map": args.device_map,
        "attn_implementation": args.attn_implementation,
        "hub_token_env": args.hub_token_env,
        "load_in": args.load_in,
    }


def add_hf_loading(p: Any) -> None:
    """The transformers loading flags of `llmcal score` and `llmcal finetune`."""
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of --model")
    p.add_argument(
        "--device-map",
        default=None,
        help="accelerate placement, e.g. auto: spread a model too large for one device",
    )
    p.add_argument(
        "--attn-implementation",
        default=None,
        help="attention kernel: eager, sdpa, flash_attention_2, …",
    )
    p.add_argument(
        "--hub-token-env",
        default=None,
        metavar="VAR",
        help="read the hub token from $VAR (default: huggingface_hub reads HF_TOKEN); never logged",
    )
    p.add_argument(
        "--load-in",
        choices=["8bit", "4bit"],
        default=None,
        help="quantise the weights with bitsandbytes (pip install bitsandbytes)",
    )
