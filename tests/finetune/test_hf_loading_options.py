"""HFScorer loading options (revision, device map, attention, hub token, 8/4-bit) on a local
tiny model directory: they reach from_pretrained, are recorded, and the token never leaks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny import tiny_task

from llmcal.errors import ConfigError, ModelError
from llmcal.models import HFScorer
from llmcal.scores import Scores

TOKEN = "hf_llmcal_test_secret_0123456789"


def test_options_reach_from_pretrained_and_the_token_is_never_recorded(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCAL_TEST_TOKEN", TOKEN)
    scorer = HFScorer(
        str(tiny_model),
        device="cpu",
        progress=False,
        revision="main",
        device_map="auto",
        attn_implementation="eager",
        hub_token_env="LLMCAL_TEST_TOKEN",
    )
    # from_pretrained saw them: accelerate placed the model, the eager kernel is in use
    assert scorer.model.config._attn_implementation == "eager"
    assert scorer.device == "cpu"
    scores = scorer.score(tiny_task(4))
    meta = scores.meta
    assert meta["revision"] == "main" and meta["device_map"] == "auto"
    assert meta["attn_implementation"] == "eager" and "load_in" not in meta
    path = scores.save(tmp_path / "s.parquet")
    assert TOKEN.encode() not in path.read_bytes()
    assert TOKEN not in repr(Scores.load(path).meta) and TOKEN not in repr(vars(scorer))
    # the same numbers as a plain load
    plain = HFScorer(str(tiny_model), device="cpu", progress=False).score(tiny_task(4))
    assert plain.equals(scores, atol=1e-5)


def test_device_map_decides_where_the_weights_go(tiny_model: Path) -> None:
    # "meta" holds no data: only a device map that reached from_pretrained can put them there
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False, device_map="meta")
    assert scorer.device == "meta"
    assert {p.device.type for p in scorer.model.parameters()} == {"meta"}


def test_missing_token_variable_and_bad_revision_are_user_errors(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMCAL_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="LLMCAL_NO_SUCH_TOKEN is not set"):
        HFScorer(str(tiny_model), device="cpu", hub_token_env="LLMCAL_NO_SUCH_TOKEN")
    with pytest.raises(ConfigError, match="8bit or 4bit"):
        HFScorer(str(tiny_model), device="cpu", load_in="2bit")


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_load_in_without_bitsandbytes_names_the_package(tiny_model: Path, bits: str) -> None:
    with pytest.raises(
        ModelError, match=f"--load-in {bits} needs bitsandbytes.*pip install bitsandbytes"
    ):
        HFScorer(str(tiny_model), device="cpu", load_in=bits)


def test_score_cli_passes_the_loading_flags(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmcal.cli import main

    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in tiny_task(3)))
    out = tmp_path / "s.parquet"
    code = main(
        ["score", "--model", str(tiny_model), "--task", str(task), "--device", "cpu",
         "--attn-implementation", "eager", "--revision", "main", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "Loading weights" not in capsys.readouterr().err  # transformers' own bar stays quiet
    meta = Scores.load(out).meta
    assert meta["attn_implementation"] == "eager" and meta["revision"] == "main"
    code = main(
        ["score", "--model", str(tiny_model), "--task", str(task), "--device", "cpu",
         "--hub-token-env", "LLMCAL_NO_SUCH_TOKEN", "--out", str(tmp_path / "x.parquet")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "LLMCAL_NO_SUCH_TOKEN" in err and not (tmp_path / "x.parquet").exists()
