"""Go load generators for the serving benchmark: ghz (gRPC) and vegeta (HTTP).

A Python client on the same 2 cores spends more CPU per call than the server it measures; these
do not. Both are built from the Go module proxy by ``tests/benchmarks/loadgen-tools.sh`` into
``.tools/``. Every function returns the benchmark's summary: ``n`` answered calls, ``errors``
(any status but OK / 2xx), ``req_s``, ``p50`` and ``p99`` in milliseconds.

Closed loop: ``concurrency`` workers call back to back. A short run first measures the rate, and
the measured run then makes a fixed number of calls (ghz in duration mode reports the calls still
in flight at the end as errors). Open loop: a fixed request rate; each tool gets enough workers
(``rate / 4``, at least 64) that a slow answer does not hold back the next send, so latency is not
hidden by coordinated omission unless the server falls that far behind.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = ["LoadTools", "load_tools"]


class LoadTools:
    """The two binaries and the protoset ghz needs (it cannot parse proto3 ``optional`` from
    .proto files, and reflection fails on them: a compiled descriptor set works)."""

    def __init__(self, ghz: str, vegeta: str, work: Path) -> None:
        self.ghz, self.vegeta, self.work = ghz, vegeta, work
        self.protoset = work / "marketing.protoset"
        self._data: dict[int, Path] = {}
        import grpc_tools
        from grpc_tools import protoc

        include = Path(grpc_tools.__file__).parent / "_proto"
        protos = sorted(str(p) for p in (REPO / "protos" / "marketing" / "v1").glob("*.proto"))
        rc = protoc.main(["protoc", f"-I{REPO / 'protos'}", f"-I{include}", "--include_imports",
                          f"--descriptor_set_out={self.protoset}", *protos])
        if rc != 0:
            raise RuntimeError("protoc could not build the protoset for ghz")

    # -- gRPC ----------------------------------------------------------------------------------
    def _data_file(self, requests: list) -> Path:
        from google.protobuf.json_format import MessageToDict

        key = id(requests)
        if key not in self._data:
            path = self.work / f"data-{len(self._data)}.json"
            # ghz sends the messages of a JSON array round-robin
            messages = [MessageToDict(r) for r in requests[:2000]]
            for m in messages:  # an empty mask (all fields) is left out: ghz's JSON reader wants no ""
                if m.get("fieldMask") == "":
                    del m["fieldMask"]
            path.write_text(json.dumps(messages), encoding="utf-8")
            self._data[key] = path
        return self._data[key]

    def _ghz(self, target: str, method: str, requests: list, *extra: str) -> dict[str, Any]:
        if target.startswith("ipv4:"):  # direct ingress: ghz dials one address, not a list
            addresses = target.removeprefix("ipv4:").split(",")
            if len(addresses) != 1:
                raise ValueError(f"ghz dials one address; got {len(addresses)} replicas: run one replica")
            target = addresses[0]
        out = subprocess.run([self.ghz, "--insecure", "--protoset", str(self.protoset), "--call", method,
                              "-D", str(self._data_file(requests)), "--timeout", "10s", "--format", "json",
                              *extra, target],
                             capture_output=True, text=True, timeout=600)
        if out.returncode not in (0, 1) or not out.stdout.strip():
            raise RuntimeError(f"ghz failed: {out.stderr[-500:]}")
        report = json.loads(out.stdout)
        codes = report.get("statusCodeDistribution") or {}
        ok = int(codes.get("OK", 0))
        pct = {int(d["percentage"]): d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
        total_s = report["total"] / 1e9
        return {"n": ok, "errors": sum(int(v) for k, v in codes.items() if k != "OK"),
                "req_s": ok / total_s if total_s else 0.0, "p50": pct.get(50, float("nan")),
                "p99": pct.get(99, float("nan")), "codes": codes}

    def grpc_closed(self, target: str, method: str, requests: list, concurrency: int, seconds: float) -> dict:
        probe = self._ghz(target, method, requests, "-c", str(concurrency), "-z", "2s")  # also the warm-up
        n = max(concurrency * 10, int(probe["req_s"] * seconds))
        return self._ghz(target, method, requests, "-c", str(concurrency), "-n", str(n))

    def grpc_open(self, target: str, method: str, requests: list, rate: float, seconds: float) -> dict:
        workers = max(64, int(rate / 4))
        return self._ghz(target, method, requests, "-c", str(workers), "--rps", str(int(rate)),
                         "-n", str(int(rate * seconds)))

    # -- HTTP ----------------------------------------------------------------------------------
    def _targets(self, urls: list[str]) -> Path:
        path = self.work / f"targets-{abs(hash(tuple(urls[:3])))}.txt"
        if not path.exists():
            path.write_text("".join(f"GET {u}\n\n" for u in urls[:2000]), encoding="utf-8")
        return path

    def _vegeta(self, urls: list[str], *attack: str) -> dict[str, Any]:
        attack_proc = subprocess.Popen([self.vegeta, "attack", "-targets", str(self._targets(urls)), "-timeout", "10s",
                                        "-keepalive", *attack], stdout=subprocess.PIPE)
        report = subprocess.run([self.vegeta, "report", "-type", "json"], stdin=attack_proc.stdout,
                                capture_output=True, text=True, timeout=600)
        attack_proc.wait(timeout=60)
        data = json.loads(report.stdout)
        codes = {str(k): int(v) for k, v in (data.get("status_codes") or {}).items()}
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        lat = data["latencies"]
        duration_s = (data.get("duration", 0) + data.get("wait", 0)) / 1e9
        return {"n": ok, "errors": sum(v for k, v in codes.items() if not k.startswith("2")),
                "req_s": ok / duration_s if duration_s else 0.0, "p50": lat["50th"] / 1e6, "p99": lat["99th"] / 1e6,
                "codes": codes}

    def http_closed(self, urls: list[str], concurrency: int, seconds: float) -> dict:
        self._vegeta(urls, "-rate", "0", "-max-workers", str(concurrency), "-duration", "2s")  # warm-up
        return self._vegeta(urls, "-rate", "0", "-workers", str(concurrency), "-max-workers", str(concurrency),
                            "-duration", f"{seconds}s")

    def http_open(self, urls: list[str], rate: float, seconds: float) -> dict:
        return self._vegeta(urls, "-rate", f"{int(rate)}/s", "-workers", str(max(64, int(rate / 4))),
                            "-duration", f"{seconds}s")


def load_tools(work: Path | None = None) -> LoadTools:
    """Build ghz and vegeta if missing (tests/benchmarks/loadgen-tools.sh) and return them."""
    out = subprocess.run([str(REPO / "tests" / "benchmarks" / "loadgen-tools.sh")], capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"building the load generators failed: {out.stderr[-800:]}")
    paths = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    return LoadTools(paths["GHZ"], paths["VEGETA"], work or Path(tempfile.mkdtemp(prefix="pmkt-loadgen-")))
