"""A hostile loopback server: malformed, huge and key-echoing replies end in one-line
EndpointErrors that never carry the API key (nor into the output, a checkpoint or meta)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run
from fake_openai import HOSTILE, FakeOpenAI
from llmcal.errors import ConfigError, EndpointError
from llmcal.models.checkpoint import checkpoint_path
from llmcal.models.http import HTTPScorer, scrub
from llmcal.scores import Scores
from llmcal.tasks import synthetic_task

KEY = "sk-hostile-0123456789abcdef"


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LLMCAL_HOSTILE_KEY", KEY)
    return "LLMCAL_HOSTILE_KEY"


def cli(url: str, out: Path, *extra: str) -> list[str]:
    return ["score", "--endpoint", url, "--model", "fake", "--task", "synthetic", "--limit", "4",
            "--chunk-size", "2", "--retries", "1", "--timeout", "10", "--out", str(out), *extra]  # fmt: skip


def no_key_anywhere(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("mode", sorted(HOSTILE))
def test_every_hostile_reply_is_a_one_line_endpoint_error_without_the_key(
    mode: str, key_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.parquet"
    with FakeOpenAI(mode, max_requests=40) as server:
        code, stdout, err = run(capsys, *cli(server.url, out, "--api-key-env", key_env))
        url = server.url
    assert_user_error(code, err, url.removesuffix("/v1"))
    assert server.requests <= 40
    assert len(err) < 1200, err
    assert not out.exists() and not checkpoint_path(out).exists()
    no_key_anywhere(tmp_path, stdout, err)
    assert all(a == f"Bearer {KEY}" for a in server.seen_auth[: server.max_requests])
    with FakeOpenAI(mode, max_requests=40) as server:
        scorer = HTTPScorer(server.url, "fake", api_key_env=key_env, max_retries=1, progress=False)
        with pytest.raises(EndpointError) as exc:
            scorer.score(synthetic_task(n=2, seed=0))
    assert KEY not in str(exc.value) and "\n" not in str(exc.value)


def test_a_well_behaved_run_stores_no_key_and_a_failed_chunk_keeps_no_key(
    key_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.parquet"
    with FakeOpenAI() as server:
        code, stdout, err = run(capsys, *cli(server.url, out, "--api-key-env", key_env))
    assert code == 0, err
    assert len(Scores.load(out)) == 4
    no_key_anywhere(tmp_path, stdout, err)
    # fails after the first chunk: the checkpoint is kept for a resume, and holds no key
    out2 = tmp_path / "part.parquet"
    with FakeOpenAI("echo-auth-402", ok_first=3) as server:
        code, stdout, err = run(capsys, *cli(server.url, out2, "--api-key-env", key_env))
    assert_user_error(code, err, "402", "kept in")
    assert checkpoint_path(out2).exists()
    no_key_anywhere(tmp_path, stdout, err)


def test_url_credentials_with_an_api_key_are_refused_and_never_echoed(
    key_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeOpenAI("echo-auth-401") as server:
        creds = server.url.replace("http://", "http://alice:pw-secret-42@")
        with pytest.raises(ConfigError, match="only one of them would be sent"):
            HTTPScorer(creds, "fake", api_key_env=key_env)
        code, _, err = run(capsys, *cli(creds, tmp_path / "a.parquet", "--api-key-env", key_env))
        assert_user_error(code, err, "user:password@")
        assert "pw-secret-42" not in err
        # URL credentials alone are sent (as Basic auth); the echo of them is scrubbed
        code, _, err = run(capsys, *cli(creds, tmp_path / "b.parquet"))
        assert_user_error(code, err, "HTTP 401")
        assert "pw-secret-42" not in err and "alice:" not in err


@pytest.mark.parametrize("key", ["sk-abc\ndef", "sk-ä-key", "sk abc", "sk-\x7f"])
def test_api_keys_that_cannot_be_a_header_are_a_clear_error(
    key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMCAL_BAD_KEY", key)
    code, _, err = run(
        capsys,
        *cli("http://127.0.0.1:9/v1", tmp_path / "r.parquet", "--api-key-env", "LLMCAL_BAD_KEY"),
    )
    assert_user_error(code, err, "LLMCAL_BAD_KEY", "cannot be sent in an HTTP header")
    assert key not in err


def test_scrub_removes_keys_auth_values_and_url_credentials() -> None:
    text = (
        'Authorization: Bearer tok-1 {"authorization": "Basic dXNlcjpwdw=="} '
        "https://u:p4ss@host/v1 api_key=tok-2 x-api-key: tok-3 " + "z" * 1000
    )
    clean = scrub(text, ["tok-2"])
    for secret in ("tok-1", "dXNlcjpwdw==", "p4ss", "tok-2", "tok-3"):
        assert secret not in clean
    assert len(clean) < 400 and "more characters" in clean
