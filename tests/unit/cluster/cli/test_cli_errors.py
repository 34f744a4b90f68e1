"""No traceback reaches a `pmkt` user: every failure is one line that names the command (and the
file, field or setting at fault) and a non-zero exit.

The cases run the real entry point as subprocesses (``python -m cluster.cli``), all on one empty
PMKT_HOME: nothing was ingested, no features, no model. Each fails before Spark or Ray starts,
so the only other lines a run may print are progress lines (``tune ctr: loading ... (0%)``). The
subprocesses of the selected cases are started when the first case runs, three at a time, the
cheap ones first; each test waits for its own.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import cli
from cluster.cli import context
from cluster.core.errors import FailedPrecondition, describe
from tests.ports import free_port

PHONE = "13812345678"
ORDERS_HEADER = "order_id,user_id,order_time,amount"
ORDER_ROW = "o1,u1,2026-03-01 10:00:00,12.50"
#: Folders of broken deliveries: name -> {file: content}.
DELIVERIES: dict[str, dict[str, str]] = {
    "no_contract_files": {"readme.txt": "not a delivery\n"},
    "missing_orders": {"impressions.csv": "impression_id,user_id,ts,clicked\n"},
    "empty_file": {"orders.csv": ""},
    "header_only": {"orders.csv": ORDERS_HEADER + "\n\n"},
    "semicolons": {"orders.csv": ORDERS_HEADER.replace(",", ";") + "\n" + ORDER_ROW.replace(",", ";") + "\n"},
    "unknown_column": {"orders.csv": ORDERS_HEADER + ",coupon\n" + ORDER_ROW + ",SPRING\n"},
    "headerless_users": {"orders.csv": ORDERS_HEADER + "\n" + ORDER_ROW + "\n", "users.csv": f"u1,{PHONE},F\n"},
}
#: The field each broken delivery's error names, and what its line says.
DELIVERY_SAYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "no_contract_files": ("orders", ("orders.csv", "required and missing")),
    "missing_orders": ("orders", ("orders.csv", "required and missing")),
    "empty_file": ("orders", ("orders.csv", "no header row")),
    "header_only": ("orders", ("orders.csv", "header but no rows")),
    "semicolons": ("orders", ("orders.csv", "separated by ';'")),
    "unknown_column": ("orders.coupon", ("orders.csv", "unknown column 'coupon'")),
    "headerless_users": ("users", ("users.csv", "is the header row missing?")),
}
_PROGRESS = re.compile(r"^[\w ]+: .* \(\d+%\)$")


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    #: The command the line must name: it starts ``error in <step>``.
    step: str
    says: tuple[str, ...] = ()
    #: Serve's port to hold while the case runs: "grpc" or "http".
    hold: str | None = None


def _cases() -> list[Case]:
    out: list[Case] = []
    # cheap first: usage errors and ingest's checks (no Spark), then the rest by cost
    for cmd, opt in ((("ingest",), ()), (("demo",), ("--input",))):
        name = cmd[0]
        step = f"pmkt {name}" if name == "ingest" else "pmkt demo, step ingest"
        out.append(Case(f"{name}-not-a-dir", (*cmd, *opt, "{base}/no_contract_files/readme.txt"), f"pmkt {name}",
                        ("is a file",)))
        out.append(Case(f"{name}-no-such-dir", (*cmd, *opt, "{base}/nowhere"), f"pmkt {name}", ("does not exist",)))
        out += [Case(f"{name}-{d}", (*cmd, *opt, f"{{base}}/{d}"), f"{step} ({field})", says)
                for d, (field, says) in DELIVERY_SAYS.items()]
    out += [
        Case("bad-option", ("--bogus",), "pmkt", ("No such option '--bogus'",)),
        Case("bad-model", ("tune", "nope"), "pmkt tune", ("Invalid value for 'MODEL': 'nope' is not one of",)),
        Case("models-promote", ("models", "promote", "ctr", "v0099"), "pmkt models promote (version)",
             ("no version v0099", "pmkt tune ctr")),
        Case("models-list", ("models", "list", "ctr"), "pmkt models list (model)", ("pmkt tune ctr",)),
        Case("models-rollback", ("models", "rollback", "ctr"), "pmkt models rollback", ("pmkt tune ctr",)),
        Case("serve-grpc-taken", ("serve",), "pmkt serve (serve.grpc_port)", ("set serve.grpc_port",), hold="grpc"),
        Case("serve-http-taken", ("serve",), "pmkt serve (serve.http_port)", ("set serve.http_port",), hold="http"),
    ]
    needs = {"rfm": "no orders", "clv": "no orders", "tags": "no orders", "tables": "no orders",
             "demand": "no orders", "campaigns": "no impressions", "funnels": "no events",
             "attributes": "no users", "profiles": "nothing to build profiles from"}
    out += [Case(f"features-{f}", ("features", f), f"pmkt features {f}", (says, "pmkt ingest"))
            for f, says in needs.items()]
    runs = {"ctr": "pmkt features tables", "demand": "pmkt features demand", "attributes": "pmkt features attributes",
            "churn": "pmkt features tables", "recs": "pmkt features tags", "segments": "pmkt features rfm"}
    out += [Case(f"tune-{m}", ("tune", m, "--smoke-test"), f"pmkt tune {m}", (run,)) for m, run in runs.items()]
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("pmkt-empty-home")
    env = {**os.environ, "PMKT_HOME": str(home), "PMKT_SPARK__SHUFFLE_PARTITIONS": "2",
           "PMKT_SERVE__GRPC_PORT": str(free_port()), "PMKT_SERVE__HTTP_PORT": str(free_port())}
    for name in ("PMKT_SETTINGS", "PMKT_PROFILE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("deliveries")
    for folder, files in DELIVERIES.items():
        (base / folder).mkdir()
        for name, text in files.items():
            (base / folder / name).write_text(text, encoding="utf-8")
    return base


def _pmkt(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def runs(request, env, base):
    """Case id -> the future of its finished process; only the selected cases run."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params}
    held: list[socket.socket] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures: dict[str, Future] = {}
        for case in CASES:
            if case.id not in selected:
                continue
            case_env = dict(env)
            if case.hold:
                port = free_port()
                case_env[f"PMKT_SERVE__{case.hold.upper()}_PORT"] = str(port)
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sock.listen()
                held.append(sock)
            argv = [a.replace("{base}", str(base)) for a in case.argv]
            futures[case.id] = pool.submit(_pmkt, argv, case_env)
        yield futures
    for sock in held:
        sock.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failure_is_one_line_naming_the_step(case: Case, runs):
    proc = runs[case.id].result()
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    lines = [ln for ln in output.splitlines() if ln.strip() and not _PROGRESS.match(ln)]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"error in {case.step}: "), lines[0]
    for fragment in case.says:
        assert fragment in lines[0]
    assert proc.returncode == 2  # a platform or usage error, not an unexpected one (1)
    assert PHONE not in output


def test_report_before_any_model_says_what_is_missing(env, tmp_path):
    out = tmp_path / "report.html"
    proc = _pmkt(["report", "--output", str(out)], env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.is_file()
    assert "Traceback" not in output
    missing = [ln for ln in proc.stdout.splitlines() if "not available" in ln]
    assert len(missing) >= 5  # every section, one line each, naming the command that builds its input
    assert all("`pmkt " in ln for ln in missing)


# -- in process: the unexpected error ----------------------------------------------------------


def _raise(exc: BaseException):
    def load_settings(*_a, **_k):
        raise exc

    return load_settings


class AnalysisException(Exception):
    """Shaped like pyspark's captured errors: the message in ``_desc``, str() asks the JVM."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self._desc = desc

    def __str__(self) -> str:
        raise AssertionError("SparkContext._jvm is None")


class RayTaskError(Exception):
    """Shaped like Ray's wrapper: the worker's traceback as message, the original in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray::ImplicitFunc.train() (pid=1, ip=127.0.0.2)\n  File \"x.py\", line 3\n{cause!r}")
        self.cause = cause


def test_unexpected_error_is_one_masked_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(context, "load_settings", _raise(ValueError(f"invalid literal for int() with base 10: '{PHONE}'")))
    assert cli.main(["settings", "show"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["error in pmkt settings show: ValueError: invalid literal for int() with base 10: "
                                "'...' (run with -v for the trace)"]


def test_verbose_prints_the_trace_then_the_line(monkeypatch, capsys):
    monkeypatch.setattr(context, "load_settings", _raise(ValueError("invalid literal for int() with base 10: 'x'")))
    assert cli.main(["-v", "settings", "show"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert any("in load_settings" in ln for ln in err)
    assert err[-1] == ("error in pmkt settings show: ValueError: invalid literal for int() with base 10: '...' "
                       "(trace above)")


def test_spark_error_is_its_first_line_without_the_jvm_trace(monkeypatch, capsys):
    desc = ("[PATH_NOT_FOUND] Path does not exist: file:/lake/raw/orders.\n\nJVM stacktrace:\n"
            "org.apache.spark.sql.AnalysisException: [PATH_NOT_FOUND] ...\n\tat org.apache.spark.sql.Dataset.ofRows")
    monkeypatch.setattr(context, "load_settings", _raise(AnalysisException(desc)))
    assert cli.main(["settings", "show"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error in pmkt settings show: AnalysisException: [PATH_NOT_FOUND] Path does not exist: "
        "file:/lake/raw/orders. (run with -v for the trace)"]


def test_platform_error_raised_in_a_ray_task_is_a_platform_error(monkeypatch, capsys):
    wrapped = RayTaskError(FailedPrecondition("no rfm features yet: run `pmkt features rfm` first"))
    monkeypatch.setattr(context, "load_settings", _raise(wrapped))
    assert cli.main(["settings", "show"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error in pmkt settings show: no rfm features yet: run `pmkt features rfm` first"]


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(context, "load_settings", _raise(KeyboardInterrupt()))
    assert cli.main(["settings", "show"]) == 130
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()] == ["pmkt settings show: interrupted"]


def test_a_group_alone_prints_its_help_not_an_error(capsys):
    assert cli.main(["features"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: pmkt features") and "rfm" in err and "error in" not in err


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (KeyError("user_id"), "KeyError: 'user_id'"),
        (KeyError("u" + PHONE), "KeyError: '...'"),
        (FileNotFoundError(2, "No such file or directory", "/in/orders.csv"),
         "FileNotFoundError: No such file or directory: /in/orders.csv"),
        (RuntimeError(f"bad row for {PHONE} and 11010519491231002X\nmore"), "RuntimeError: bad row for *********** "
                                                                             "and ***********"),
        (TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
         "TypeError: unsupported operand type(s) for +: 'int' and 'str'"),
        (Exception("\n  An exception was thrown from the Python worker.\nTraceback (most recent call last):\n"
                   "  File \"w.py\", line 1, in f\nValueError: could not convert string to float: 'F'\n"),
         "Exception: ValueError: could not convert string to float: '...'"),
        (RayTaskError(ZeroDivisionError("division by zero")), "ZeroDivisionError: division by zero"),
    ],
)
def test_describe_is_one_line_without_values(exc, line):
    assert describe(exc) == line
