"""Property-based corruption of every file the CLI reads: task files, calibrator artefacts,
checkpoint lines and Scores Parquet files. Whatever the damage (byte flips, truncation, type
swaps, deep nesting, huge values), ``llmcal.cli.main`` either succeeds or exits 2 with exactly
one ``llmcal: error:`` line, no traceback and no output file, and never changes its inputs.
Scoring runs against the loopback fake server (tests/fake_openai.py), so no model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import run
from fake_openai import FakeOpenAI
from llmcal.models.checkpoint import checkpoint_path
from llmcal.scores import Scores

FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = "[" * 5000 + "]" * 5000
#: values that are wrong wherever a field has a type: the same set for every file kind
WRONG_TYPES: list[Any] = [True, "1.5", [], {}, [[1.0]], "x" * 200_000]
HUGE_TEXT = ["1e999", "-1e999", "9" * 5000, "1e-310"]


# -- mutations ----------------------------------------------------------------------------------
@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """Random byte flips or a truncation of ``data``."""
    if draw(st.booleans()):
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(out) - 1))
        out[i] = draw(st.integers(0, 255))
    return bytes(out)


def swap(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A deep copy of ``obj`` with the item at ``path`` replaced."""
    obj = json.loads(json.dumps(obj))
    cur = obj
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    return obj


def dumps_raw(obj: Any, raw: str) -> str:
    """``json.dumps(obj)`` with the placeholder string "@RAW@" replaced by raw JSON text."""
    return json.dumps(obj).replace('"@RAW@"', raw)


class Contract:
    """Run the CLI and check the contract; remembers the inputs' bytes."""

    def __init__(self, capsys: pytest.CaptureFixture[str], inputs: list[Path], out: Path):
        self.capsys, self.out = capsys, out
        self.inputs = {p: p.read_bytes() for p in inputs}

    def __call__(self, *argv: str, must_fail: bool) -> tuple[int, str, str]:
        self.out.unlink(missing_ok=True)
        code, stdout, err = run(self.capsys, *argv)
        assert "Traceback" not in err and "Traceback" not in stdout
        assert code in (0, 2), err
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("llmcal: error: "), err
            assert len(lines[0]) <= 2100
            assert not self.out.exists()
        assert not must_fail or code == 2, f"accepted a corrupt input: {stdout}"
        for path, data in self.inputs.items():
            assert path.read_bytes() == data, f"{path} changed"
        return code, stdout, err


# -- task files -----------------------------------------------------------------------------
QUESTIONS = [
    {"id": f"q{i}", "question": f"What is {i} + 1?", "choices": [str(i), str(i + 1), "7"],
     "answer": 1, "subject": "math", "source": "fuzz"}
    for i in range(4)
]  # fmt: skip
TASK_SWAPS: list[tuple[str, list[Any]]] = [
    ("question", [None, 3, "", "  \t ", *WRONG_TYPES[:5]]),
    ("choices", [None, "a|b", ["x"], ["x", 2], ["x", " "], {}, True]),
    ("answer", [True, "B", 1.0, 3, -1, 10**30]),
    ("id", [7, "", [], True]),
    ("context", [1, ["p"], True]),
    ("subject", [2, {}, False]),
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(max_requests=100_000) as s:
        yield s


def score_args(server: FakeOpenAI, task: Path, out: Path) -> list[str]:
    return ["score", "--endpoint", server.url, "--model", "fake", "--task", str(task), "--out",
            str(out), "--retries", "0", "--chunk-size", "2", "--concurrency", "1"]  # fmt: skip


@FUZZ
@given(data=st.data())
def test_corrupt_task_files(
    data: st.DataObject, server: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "task.jsonl"
    out = tmp_path / "run.parquet"
    row = data.draw(st.integers(0, len(QUESTIONS) - 1))
    kind = data.draw(st.sampled_from(["bytes", "swap", "deep", "huge"]))
    lines = [json.dumps(q) for q in QUESTIONS]
    must_fail = kind != "bytes"
    if kind == "swap":
        field, values = data.draw(st.sampled_from(TASK_SWAPS))
        lines[row] = json.dumps(swap(QUESTIONS[row], (field,), data.draw(st.sampled_from(values))))
    elif kind == "deep":
        field = data.draw(st.sampled_from(["question", "choices", "answer", "source"]))
        lines[row] = dumps_raw(swap(QUESTIONS[row], (field,), "@RAW@"), DEEP)
    elif kind == "huge":
        field = data.draw(st.sampled_from(["answer", "question", "choices"]))
        raw = data.draw(st.sampled_from(HUGE_TEXT))
        lines[row] = dumps_raw(swap(QUESTIONS[row], (field,), "@RAW@"), raw)
    text = ("\n".join(lines) + "\n").encode()
    if kind == "bytes":
        text = data.draw(byte_damage(text))
    task.write_bytes(text)
    check = Contract(capsys, [task], out)
    code, _, err = check(*score_args(server, task, out), must_fail=must_fail)
    assert not checkpoint_path(out).exists()
    if code == 2 and kind != "bytes":
        assert str(task) in err  # the error names the file


# -- calibrator artefacts -------------------------------------------------------------------
def _scores(n: int = 60, k: int = 3, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    return Scores(
        ids=[f"q{i}" for i in range(n)],
        logits=rng.normal(0, 2, (n, k)),
        labels=rng.integers(0, k, n),
        meta={"model": "fuzz"},
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from llmcal.calibrate import TemperatureScaling, VectorScaling

    folder = tmp_path_factory.mktemp("cal")
    scores = _scores()
    run_file = scores.save(folder / "run.parquet")
    cals = {}
    for cls in (TemperatureScaling, VectorScaling):
        cal = cls().fit(scores)
        cals[cal.kind] = cal.to_dict()
    return {"run": run_file.read_bytes(), "cals": cals}


CAL_SWAPS: dict[str, list[tuple[tuple[Any, ...], list[Any]]]] = {
    "temperature": [
        (("params", "temperature"), [True, "2", None, [], {}, 1e-310, 1e308, -1.0, 0]),
        (("config", "tau_range"), [True, [True, 10], "x", [0.5], None]),
    ],
    "vector": [
        (("params", "w"), [True, [True, 1.0, 1.0], ["1", 1, 1], [1e-310, 1, 1], [[1.0]] * 3]),
        (("params", "b"), [[1.0], None, [1.0, "x", 2.0], {}]),
    ],
}
CAL_COMMON: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("format",), ["llmcal", None, 1]),
    (("format_version",), [True, "1", 1.5, 0, 99]),
    (("kind",), ["nope", 1, None]),
    (("params",), [[], "p", None]),
    (("fit",), [[], 3]),
]


@FUZZ
@given(data=st.data())
def test_corrupt_calibrator_files(
    data: st.DataObject, fitted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = data.draw(st.sampled_from(sorted(fitted["cals"])))
    art = fitted["cals"][kind]
    how = data.draw(st.sampled_from(["bytes", "swap", "deep", "huge"]))
    if how == "swap":
        path, values = data.draw(st.sampled_from(CAL_SWAPS[kind] + CAL_COMMON))
        text = json.dumps(swap(art, path, data.draw(st.sampled_from(values))))
    elif how == "deep":
        where = data.draw(st.sampled_from([("params",), ("fit",), ("config",)]))
        text = dumps_raw(swap(art, where, "@RAW@"), DEEP)
    elif how == "huge":
        key = "temperature" if kind == "temperature" else "b"
        raw = data.draw(st.sampled_from(HUGE_TEXT))
        value = raw if kind == "temperature" else f"[{raw}, 0.0, 0.0]"
        text = dumps_raw(swap(art, ("params", key), "@RAW@"), value)
    else:
        text = data.draw(byte_damage(json.dumps(art, indent=1).encode())).decode("latin-1")
    cal = tmp_path / "cal.json"
    cal.write_bytes(text.encode("latin-1", errors="replace") if how == "bytes" else text.encode())
    run_file = tmp_path / "run.parquet"
    run_file.write_bytes(fitted["run"])
    out = tmp_path / "out.parquet"
    check = Contract(capsys, [cal, run_file], out)
    check("apply", str(cal), str(run_file), "--out", str(out), must_fail=how != "bytes")


# -- checkpoint lines -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def partial(server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A clean run of 6 questions, and the checkpoint of a run that failed after chunk 0."""
    folder = tmp_path_factory.mktemp("ckpt")
    task = folder / "task.jsonl"
    qs = [dict(q, id=f"c{i}") for i, q in enumerate(QUESTIONS + QUESTIONS[:2])]
    task.write_text("".join(json.dumps(q) + "\n" for q in qs))
    from cli_helpers import main

    clean = folder / "clean.parquet"
    assert main(score_args(server, task, clean)) == 0
    out = folder / "part.parquet"
    with FakeOpenAI("echo-auth-402", ok_first=3) as failing:  # probe + chunk 0, then refusals
        assert main(score_args(failing, task, out)) == 2
    lines = checkpoint_path(out).read_bytes()
    assert lines.count(b"\n") == 2  # header + chunk 0
    return {"task": task.read_bytes(), "clean": Scores.load(clean), "ckpt": lines}


def resign(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    sha = hashlib.sha256(body.encode()).hexdigest()[:16]
    return json.dumps({"sha": sha, "rec": body}, separators=(",", ":")).encode()


CKPT_SWAPS: list[tuple[int, str, list[Any]]] = [
    (1, "chunk", ["0", -1, True, None, 1.5]),
    (1, "ids", ["c0", [1, 2], ["other", "c1"], None]),
    (1, "rows", ["r", [[0.1, "x", 0.3], [1, 2, 3]], [[True]], [1.0, 2.0]]),
    (1, "meta", [[], "m", None]),
    (0, "key", ["k", [], None, {"other": 1}]),
    (0, "llmcal_checkpoint", [2, "1", None]),
]


@FUZZ
@given(data=st.data())
def test_corrupt_checkpoint_lines(
    data: st.DataObject,
    server: FakeOpenAI,
    partial: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = tmp_path / "task.jsonl"
    task.write_bytes(partial["task"])
    out = tmp_path / "part.parquet"
    header, chunk = partial["ckpt"].split(b"\n")[:2]
    how = data.draw(st.sampled_from(["bytes", "swap", "deep"]))
    if how == "bytes":
        text = data.draw(byte_damage(partial["ckpt"]))
    else:
        lines = [header, chunk]
        if how == "swap":
            line, field, values = data.draw(st.sampled_from(CKPT_SWAPS))
        else:
            line, field, values = 1, data.draw(st.sampled_from(["meta", "rows", "ids"])), [None]
        rec = json.loads(json.loads(lines[line])["rec"])
        value = data.draw(st.sampled_from(values))
        if how == "deep":
            value = json.loads("[" * 200 + "]" * 200)  # deeper than any checkpoint field
        lines[line] = resign(swap(rec, (field,), value))
        text = b"\n".join(lines) + b"\n"
    ckpt = checkpoint_path(out)
    ckpt.write_bytes(text)
    check = Contract(capsys, [task], out)
    code, _, err = check(*score_args(server, task, out), must_fail=how == "swap")
    if code == 0:  # a damaged tail is cut off and rescored: the clean result
        got, clean = Scores.load(out), partial["clean"]
        assert list(got.ids) == list(clean.ids)
        np.testing.assert_array_equal(got.logits, clean.logits)
        assert not ckpt.exists()
    else:
        assert str(ckpt) in err


# -- Scores Parquet files -------------------------------------------------------------------
SCORES_SWAPS = ["label-str", "label-null", "logits-float", "logits-str", "id-int", "meta-list",
                "meta-deep", "meta-not-json", "meta-str", "n_options-str", "drop-label"]  # fmt: skip


def _swapped_table(scores_file: Path, how: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(scores_file)
    meta = dict(table.schema.metadata or {})
    cols = {name: table.column(name) for name in table.column_names}
    n = table.num_rows
    if how == "label-str":
        cols["label"] = pa.array([str(x) for x in cols["label"].to_pylist()])
    elif how == "label-null":
        cols["label"] = pa.array([None, *cols["label"].to_pylist()[1:]], type=pa.int64())
    elif how == "logits-float":
        cols["logits"] = pa.array([1.0] * n)
    elif how == "logits-str":
        cols["logits"] = pa.array([["a", "b", "c"]] * n)
    elif how == "id-int":
        cols["id"] = pa.array(list(range(n)))
    elif how == "n_options-str":
        cols["n_options"] = pa.array(["3"] * n)
    elif how == "drop-label":
        del cols["label"]
    else:
        header = json.loads(meta[b"llmcal"])
        raw = {
            "meta-list": json.dumps([header]),
            "meta-deep": json.dumps(dict(header, meta="@RAW@")).replace('"@RAW@"', DEEP),
            "meta-not-json": "{not json",
            "meta-str": json.dumps(dict(header, meta="a string")),
        }[how]
        meta[b"llmcal"] = raw.encode()
    return pa.table(cols).replace_schema_metadata(meta)


@FUZZ
@given(data=st.data())
def test_corrupt_scores_files(
    data: st.DataObject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    run_file = _scores(n=12).save(tmp_path / "run.parquet")
    how = data.draw(st.sampled_from(["bytes", *SCORES_SWAPS]))
    if how == "bytes":
        run_file.write_bytes(data.draw(byte_damage(run_file.read_bytes())))
    else:
        pq.write_table(_swapped_table(run_file, how), run_file)
    command = data.draw(st.sampled_from(["eval", "fit", "apply"]))
    out = tmp_path / ("out.json" if command != "apply" else "out.parquet")
    cal = tmp_path / "cal.json"
    if command == "apply":
        from llmcal.calibrate import TemperatureScaling

        TemperatureScaling().fit(_scores()).save(cal)
    argv = {
        "eval": ["eval", str(run_file), "--no-ci", "--json", str(out)],
        "fit": ["fit", "temperature", str(run_file), "--out", str(out)],
        "apply": ["apply", str(cal), str(run_file), "--out", str(out)],
    }[command]
    inputs = [run_file, cal] if command == "apply" else [run_file]
    check = Contract(capsys, inputs, out)
    code, _, err = check(*argv, must_fail=how != "bytes")
    if code == 2:
        assert str(run_file) in err
