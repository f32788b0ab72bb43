#!/usr/bin/env python3
"""Every benchmark in bench/, one command: a table of headline figures, and JSON.

    sudo .venv/bin/python bench/run.py                 # all of them, full size (~10 min)
    sudo .venv/bin/python bench/run.py --quick         # smaller and shorter (~5 min, a smoke run)
    sudo .venv/bin/python bench/run.py --only sessions,compare
    .venv/bin/python bench/run.py --list               # the benches and their commands

Each bench runs as its own process (as you would run it by hand; the exact command is
recorded), bounded by --timeout, one after the other so they do not share the CPUs with
each other. Its printed figures are kept whole in the JSON (``output``) and the headline
ones parsed out (``figures``); benches that write JSON themselves (load_mock, ha,
slurmrestd_compare) hand that over. The JSON goes to bench/results/latest.json (--out),
rewritten after every bench, so an interrupted run keeps what it measured.

Benches that need root (a real Slurm, sshd, sdiag) are skipped, with the reason, when not
run as root. None of them is part of the pytest suite.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import machine_info

PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


@dataclass
class Bench:
    name: str
    script: str
    full: list
    quick: list
    root: bool = False
    json_arg: str | None = None          # the option that makes the bench write its JSON to a file
    about: str = ""
    extract: object = None               # text -> dict of headline figures
    headline: object = None              # figures/JSON -> one line for the table
    timeout: float = 900
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ extractors
def _json_tail(text: str, opener: str):
    """The JSON document that starts at the last line equal to ``opener`` ('[' or '{')."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip() == opener:
            try:
                return json.loads("\n".join(lines[i:]))
            except ValueError:
                break
    return None


def sessions_figures(text):
    return {"stores": _json_tail(text, "[")}


def sessions_headline(f):
    rows = f.get("stores") or []
    return "; ".join(f"{r['store']}: {r['with_sessions']['req_s']:,.0f} req/s with sessions vs "
                     f"{r['without_auth']['req_s']:,.0f} without (p50 {r['with_sessions']['p50_ms']:.2f} ms)"
                     for r in rows)


_TRANSPORT = re.compile(r"^(?P<label>\S.*?)\s+n=(?P<n>\d+)\s+median\s+(?P<median>[\d.]+) ms\s+p90\s+(?P<p90>[\d.]+)"
                        r"\s+p99\s+(?P<p99>[\d.]+)\s+mean\s+(?P<mean>[\d.]+)", re.MULTILINE)


def transports_figures(text):
    return {m["label"].strip(): {k: float(m[k]) for k in ("median", "p90", "p99", "mean")} | {"n": int(m["n"])}
            for m in _TRANSPORT.finditer(text)}


def transports_headline(f):
    return "; ".join(f"{k}: median {v['median']:g} ms" for k, v in f.items())


def polling_figures(text):
    out = {}
    m = re.search(r"calls: (\d+) \(([\d,]+)/s\); squeue runs by the plugin: (\d+)", text)
    if m:
        out.update(calls=int(m[1]), calls_per_s=float(m[2].replace(",", "")), squeue_runs=int(m[3]))
    for m in re.finditer(r"^\s+(get_job|list_jobs)\s+([\d,]+)/s\s+p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms", text, re.MULTILINE):
        out[m[1]] = {"per_s": float(m[2].replace(",", "")), "p50_ms": float(m[3]), "p99_ms": float(m[4])}
    m = re.search(r"REQUEST_JOB_INFO per second: ([\d.]+)", text)
    if m:
        out["job_info_rpc_per_s"] = float(m[1])
    return out


def polling_headline(f):
    if not f:
        return ""
    return (f"{f.get('calls_per_s', 0):,.0f} plugin calls/s (get_job p99 {f.get('get_job', {}).get('p99_ms', '-')} ms), "
            f"{f.get('job_info_rpc_per_s', '-')} job-info RPC/s")


_API_ROW = re.compile(r"^\s*(\d+) (GET /jobs(?:/\{id\})?)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s*$", re.MULTILINE)


def polling_api_figures(text):
    return {"runs": [{"clients": int(m[1]), "request": m[2], "req_per_s": float(m[3].replace(",", "")),
                      "p50_ms": float(m[4]), "p99_ms": float(m[5]), "non_200": int(m[6]),
                      "job_info_rpc_per_s": float(m[7])} for m in _API_ROW.finditer(text)]}


def polling_api_headline(f):
    return "; ".join(f"{r['request']} x{r['clients']}: {r['req_per_s']:,.0f} req/s p99 {r['p99_ms']:g} ms "
                     f"{r['job_info_rpc_per_s']:g} RPC/s" for r in f.get("runs", []))


def files_figures(text):
    out = {}
    m = re.search(r"peak growth over the whole run: ([\d.]+) MiB", text)
    if m:
        out["peak_growth_mib"] = float(m[1])
    for key, pat in (("upload", r"after upload.*?VmHWM\s+([\d.]+) MiB"), ("download", r"after download.*?VmHWM\s+([\d.]+) MiB"),
                     ("before", r"worker before.*?VmHWM\s+([\d.]+) MiB")):
        m = re.search(pat, text)
        if m:
            out[f"vmhwm_{key}_mib"] = float(m[1])
    out["throughput"] = re.findall(r"([\d.]+ MiB/s)", text)
    return out


def files_headline(f):
    return (f"worker VmHWM {f.get('vmhwm_before_mib', '-')} -> {f.get('vmhwm_download_mib', '-')} MiB "
            f"(peak growth {f.get('peak_growth_mib', '-')} MiB); {', '.join(f.get('throughput', [])[:2])}")


def load_headline(f):
    return (f"{f.get('clients')} clients {f.get('duration_s')} s: {f.get('req_per_s')} req/s, p50 {f.get('p50_ms')} ms, "
            f"p99 {f.get('p99_ms')} ms, errors {f.get('errors')}")


def ha_figures(text):
    return _json_tail(text, "{") or {}


def ha_headline(f):
    if not f:
        return ""
    keys = [k for k in ("requests", "ok", "p50_ms", "p99_ms", "submissions", "at_scheduler_exactly_once",
                        "duplicates_at_scheduler") if k in f]
    return ", ".join(f"{k} {f[k]}" for k in keys)


def compare_headline(doc):
    out = []
    for v in doc.get("targets", []):
        r = f"{v['scenario']}: x{v['ratio']}" if v.get("ratio") is not None else v["scenario"]
        if "met" in v:
            r += " met" if v["met"] else " NOT met"
        out.append(r)
    return "; ".join(out)


BENCHES = [
    Bench("sessions", "bench/sessions.py", ["-n", "3000"], ["-n", "500"],
          about="cost of a session check per request (SQLite and Redis store), in-process",
          extract=sessions_figures, headline=sessions_headline, timeout=300),
    Bench("transports", "bench/transports.py", ["-n", "200"], ["-n", "30"], root=True,
          about="latency per command of the local, SSH and SSM (test double) transports",
          extract=transports_figures, headline=transports_headline, timeout=600),
    Bench("files_rss", "bench/files_rss.py", ["--size", str(256 * 1024 ** 2)], ["--size", str(64 * 1024 ** 2)],
          about="peak RSS of a gunicorn worker moving a file up and down (256 MiB; the bench's own default is 1 GiB)",
          extract=files_figures, headline=files_headline, timeout=600),
    Bench("load_mock", "bench/load_mock.py", ["--clients", "500", "--duration", "30"],
          ["--clients", "500", "--duration", "10"], json_arg="--json",
          about="500 keep-alive clients on the mock backend behind gunicorn as deployed",
          headline=load_headline, timeout=300),
    Bench("ha", "bench/ha.py", ["--duration", "20", "--json"], ["--duration", "12", "--kill-at", "4",
                                                              "--restart-at", "8", "--json"],
          about="3 replicas behind NGINX with Redis sessions, one SIGKILLed and restarted under load",
          extract=ha_figures, headline=ha_headline, timeout=300),
    Bench("slurm_polling", "bench/slurm_polling.py", ["--seconds", "10", "--baseline"], ["--seconds", "4"], root=True,
          about="polling threads on the slurm_ssm plugin: shared snapshot vs one squeue per call, slurmctld RPC/s",
          extract=polling_figures, headline=polling_headline, timeout=600),
    Bench("slurm_polling_api", "bench/slurm_polling.py", ["--api", "--seconds", "10"], ["--api", "--seconds", "4"],
          root=True, about="the same through gunicorn and HTTP (GET /jobs, /jobs/{id} at 8 and 64 clients)",
          extract=polling_api_figures, headline=polling_api_headline, timeout=600),
    Bench("compare", "bench/slurmrestd_compare.py", [], ["--quick"], root=True, json_arg="--json",
          about="the gateway against slurmrestd on 1000 queued jobs: list, detail, storm, long poll, submit",
          headline=compare_headline, timeout=1500),
    Bench("compare_granian", "bench/slurmrestd_compare.py", ["--front", "granian", "--only", "detail,storm"],
          ["--front", "granian", "--only", "detail,storm", "--quick"], root=True, json_arg="--json",
          about=("the detail and storm runs again with the same app served by granian instead of gunicorn "
                 "(what the HTTP front end costs; a bench option, not a deployment one)"),
          headline=compare_headline, timeout=1200),
]


# ------------------------------------------------------------------------------ running
def run_bench(b: Bench, quick: bool, tmp: Path) -> dict:
    argv = [PY, b.script, *(b.quick if quick else b.full)]
    json_path = None
    if b.json_arg:
        json_path = tmp / f"{b.name}.json"
        argv += [b.json_arg, str(json_path)]
    shown = " ".join(["sudo .venv/bin/python" if b.root else ".venv/bin/python", b.script,
                      *(b.quick if quick else b.full)] + ([b.json_arg, "out.json"] if b.json_arg else []))
    rec = {"name": b.name, "about": b.about, "command": shown, "quick": quick}
    if b.root and os.geteuid() != 0:
        rec.update(rc=None, skipped="needs root")
        return rec
    print(f"==> {b.name}: {shown}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=b.timeout, check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", _text(exc.stdout), _text(exc.stderr) + f"\n(stopped after {b.timeout:g} s)"
    rec.update(rc=rc, seconds=round(time.monotonic() - t0, 1))
    sys.stdout.write(out)
    if rc != 0:
        sys.stdout.write(err[-3000:])
    rec["output"] = out[-20000:]
    if rc != 0:
        rec["stderr"] = err[-5000:]
    figures = {}
    if json_path is not None and json_path.exists():
        try:
            figures = json.loads(json_path.read_text())
        except ValueError:
            pass
    elif b.extract is not None:
        try:
            figures = b.extract(out) or {}
        except Exception as exc:            # noqa: BLE001 - a parse slip must not lose the run
            figures = {"parse_error": repr(exc)}
    rec["figures"] = figures
    try:
        rec["headline"] = b.headline(figures) if (b.headline and figures) else ""
    except Exception as exc:                # noqa: BLE001
        rec["headline"] = f"(headline: {exc!r})"
    return rec


def markdown(doc: dict) -> str:
    """The figures of a run (bench/results/latest.json) as Markdown, for bench/README.md."""
    m = doc["machine"]
    out = [(f"Measured {doc.get('started', '?')}{' (--quick)' if doc.get('quick') else ''} on {m['nproc']} CPUs "
           f"({m['cpu_model']}), {m['mem_gib']} GiB, {m['os']}, kernel {m['kernel']}, {m['slurm']}, "
           f"Python {m['python']}."), ""]
    for rec in doc["benches"]:
        out += [f"### {rec['name']}", "", rec.get("about", ""), "", f"    {rec['command']}", ""]
        if rec.get("skipped"):
            out += [f"skipped: {rec['skipped']}", ""]
            continue
        if rec.get("rc") != 0:
            out += [f"exit status {rec.get('rc')}", ""]
        if rec["name"].startswith("compare") and rec.get("figures", {}).get("results"):
            out += [compare_markdown(rec["figures"]), ""]
        elif rec.get("output"):
            text = rec["output"].strip()
            if rec["name"] in ("sessions", "ha", "load_mock"):     # their JSON dump repeats the figures
                text = text.split("\n[\n", 1)[0].split("\n{\n", 1)[0]
            out += ["```", text[-4000:], "```", ""]
    return "\n".join(out)


def compare_markdown(doc: dict) -> str:
    verdicts = {v["scenario"]: v for v in doc.get("targets", [])}
    rows = [("| scenario | server | req/s | p50 ms | p99 ms | errors | job-info RPC/s | server CPU s | slurmctld CPU s "
            "| gateway/slurmrestd | target |"), "|" + "---|" * 11]
    for r in doc["results"]:
        v = verdicts.get(r["scenario"], {})
        tgt = ""
        if r["server"] == "gateway" and "target" in v:
            tgt = ("**met**: " if v["met"] else "**not met**: ") + v["target"]
        ratio = f"{r['ratio']:.2f}" if r["server"] == "gateway" and r.get("ratio") is not None else ""
        server = r["server"] + (" (*)" if r.get("other_tests_running") else "")
        rows.append(f"| {r['scenario']} | {server} | {r['req_per_s']:,.1f} | {r['p50_ms']} | {r['p99_ms']} | "
                    f"{r['errors']} | {r['job_info_rpc_per_s']:.2f} | {r['server_cpu_s']} | {r['slurmctld_cpu_s']} | "
                    f"{ratio} | {tgt} |")
    head = [(f"{doc.get('queued_jobs')} jobs in squeue ({', '.join(f'{u}: {n}' for u, n in doc.get('jobs_per_user', {}).items())} "
            f"held by the bench); {doc.get('total_s')} s in all."), ""]
    head += [f"- {n}: {d}" for n, d in doc.get("servers", {}).items()]
    head += [f"- load: {doc.get('loadgen')}", ""]
    if any(r.get("other_tests_running") for r in doc["results"]):
        rows += ["", "(*) other test processes were running on the machine during this run."]
    return "\n".join(head + rows)


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    ap.add_argument("--only", help="comma-separated bench names (see --list)")
    ap.add_argument("--skip", default="", help="comma-separated bench names to leave out")
    ap.add_argument("--list", action="store_true", help="print the benches and their commands")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    ap.add_argument("--markdown", metavar="JSON", nargs="?", const="",
                    help="print the figures as Markdown (of JSON, or of this run) instead of the table")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    names = [b.name for b in BENCHES]
    wanted = args.only.split(",") if args.only else names
    unknown = set(wanted) - set(names) | (set(filter(None, args.skip.split(","))) - set(names))
    if unknown:
        sys.exit(f"unknown bench(es): {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    selected = [b for b in BENCHES if b.name in wanted and b.name not in args.skip.split(",")]
    if args.list:
        for b in selected:
            print(f"{b.name:<18} {'(root) ' if b.root else ''}{b.about}\n{'':<18} full : {b.script} {' '.join(b.full)}"
                  f"\n{'':<18} quick: {b.script} {' '.join(b.quick)}")
        return 0
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "quick": args.quick,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "benches": []}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gw-bench-run-") as tmp:
        for b in selected:
            rec = run_bench(b, args.quick, Path(tmp))
            doc["benches"].append(rec)
            failed += rec.get("rc") not in (0, None)
            doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            out_path.write_text(json.dumps(doc, indent=1) + "\n")
    m = doc["machine"]
    print(f"\n{m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, {m['os']}, kernel {m['kernel']}, "
          f"{m['slurm']}, Python {m['python']}{' (quick)' if args.quick else ''}")
    print(f"{'bench':<18} {'rc':>7} {'s':>6}  headline")
    for rec in doc["benches"]:
        rc = "skipped" if rec.get("skipped") else rec["rc"]
        print(f"{rec['name']:<18} {rc!s:>7} {rec.get('seconds', 0):>6}  {rec.get('headline') or rec.get('skipped', '')}")
    print(f"\nJSON: {out_path}")
    if args.markdown is not None:
        print("\n" + markdown(doc))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
