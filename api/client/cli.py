"""``python -m api.client``: the command line over :class:`api.client.Client`.

Results go to stdout (``--json`` for machine output), progress and errors to stderr. Exit
codes: 0 done, 1 the job failed or was cancelled, 2 a usage or API error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, TextIO

from . import DEFAULT_URL, ApiClientError, Client, Job, Json, ProgressEvent
from .args import (
    input_size,
    params_json,
    parse_arm,
    parse_arm_param,
    parse_arm_params,
    parse_param,
    parse_search,
)
from .targets import search_arm, search_target

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR = 0, 1, 2


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


class ProgressBar:
    """Stage, percent and the stage's latest metrics on ``stream``: redrawn in place on a
    terminal, one line per change otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, width: int = 20) -> None:
        self.stream, self.width, self.tty = stream, width, stream.isatty()
        self.stage, self.metrics, self.last = "", dict[str, float](), ""

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self.stage:
            self.stage, self.metrics = event.stage, {}
        self.metrics |= {
            k: v
            for k, v in event.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        filled = int(max(0.0, min(event.fraction, 1.0)) * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        numbers = " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
        line = f"[{bar}] {event.fraction:4.0%} {event.stage} {numbers}".rstrip()
        if self.tty:
            columns = shutil.get_terminal_size().columns
            self.stream.write("\r" + line[: columns - 1] + "\x1b[K")
        elif line != self.last:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
        self.last = ""


# --- output ----------------------------------------------------------------------------------


def _job_line(job: Job) -> str:
    line = f"job {job['id']} {job['status']}: {job['method']} {json.dumps(job['params'])}"
    dataset_id = job["dataset_id"]
    line += f" on {job['dataset'] if dataset_id is None else f'dataset {dataset_id}'}"
    result = job["result"]
    if result:
        line += (
            f"; top1 {result['top1']:.2f}% (float {result['float_top1']:.2f}%), "
            f"{result['average_bits']:.2f} bits, {result['compression_ratio']:.1f}x smaller"
        )
    target = job.get("target") or {}
    outcome = target.get("outcome")
    if outcome:
        line += "; " + _outcome_text(target["param"], outcome)
    if job["error_message"]:
        line += f"; {job['error_code']}: {job['error_message']}"
    return line


def _outcome_text(param: str, outcome: Json) -> str:
    """``search over bits: found, winner job 7 (bits=4), ...``; over several methods each
    searched knob is named with its method (``uniform bits + lq_nets w_bits``)."""
    arms = outcome.get("arms") or []
    knobs = [f"{a['method']} {a['param']}" for a in arms] if len(arms) > 1 else [param]
    text = f"search over {' + '.join(knobs)}: {outcome['message']}"
    winner = outcome["winner_job_id"]
    if winner is not None:
        knob = next(
            (k for a, k in zip(arms, knobs, strict=False) if a["winner_job_id"] == winner),
            param,
        )
        text += f", winner job {winner} ({knob}={outcome['winner_value']})"
    return text + f", {outcome['runs']} runs, Pareto jobs {outcome['pareto_job_ids']}"


def _result_lines(job_id: int, r: Json) -> list[str]:
    lines = [
        f"job {job_id}: top1 {r['top1']:.2f}% (float {r['float_top1']:.2f}%, artifact "
        f"{r['artifact_top1']:.2f}%), top5 {r['top5']:.2f}% (float {r['float_top5']:.2f}%)",
        f"size: float {r['float_bytes']:,} B, quantized {r['quantized_bytes']:,} B "
        f"({r['compression_ratio']:.1f}x), file {r['file_bytes']:,} B, "
        f"{r['average_bits']:.2f} bits per weight",
        f"{'layer':<32} {'bits':>6} {'weights':>10}",
    ]
    for layer in r["layers"]:
        bits, count = layer.get("bits", ""), layer.get("num_weights", "")
        lines.append(f"{layer.get('name', '?'):<32} {bits:>6} {count:>10}")
    return lines


def _show(args: argparse.Namespace, value: Any, human: list[str]) -> None:
    _out(json.dumps(value, indent=1) if args.json else "\n".join(human))


# --- commands --------------------------------------------------------------------------------


def _upload_model(client: Client, args: argparse.Namespace) -> int:
    m = client.upload_model(
        args.file, args.arch, args.num_classes, args.in_channels, args.input_size, args.name
    )
    _show(
        args,
        m,
        [
            f"model {m['id']}: {m['name']} ({m['arch']}, {m['num_classes']} classes, "
            f"{m['num_params']:,} params, sha256 {m['sha256'][:12]}…)"
        ],
    )
    return EXIT_OK


def _upload_dataset(client: Client, args: argparse.Namespace) -> int:
    d = client.upload_dataset(args.file, args.name, args.kind)
    _show(
        args,
        d,
        [
            f"dataset {d['id']}: {d['name']} ({d['kind']}, {d['num_classes']} classes, "
            f"{d['num_train']} train / {d['num_val']} val)"
        ],
    )
    return EXIT_OK


def _target(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--search bits=2,3,4 --within 1`` (or ``--under BYTES``), with any ``--also-search``
    methods and their ``--also-param(s)``, as the API's target."""
    if args.search is None:
        if args.within is not None or args.under is not None or args.also_search:
            _err("error: --within, --under and --also-search need --search PARAM=V1,V2,...")
            raise SystemExit(EXIT_ERROR)
        return None
    if (args.within is None) == (args.under is None):
        _err("error: --search needs exactly one of --within POINTS and --under BYTES")
        raise SystemExit(EXIT_ERROR)
    fixed: dict[str, Json] = {}  # a method's JSON first, then its KEY=VALUE pairs on top
    for method, params in [*(args.also_params or []), *(args.also_param or [])]:
        fixed.setdefault(method, {}).update(params)
    searched = {method for method, _, _ in args.also_search or []}
    if stray := sorted(set(fixed) - searched):
        _err(f"error: --also-param(s) for {', '.join(stray)}, which no --also-search names")
        raise SystemExit(EXIT_ERROR)
    param, values = args.search
    also = [search_arm(m, knob, vs, fixed.get(m)) for m, knob, vs in args.also_search or []]
    return search_target(
        param, values, within=args.within, under=args.under, parallel=args.parallel, also=also
    )


def _submit(client: Client, args: argparse.Namespace) -> int:
    params = dict(args.params_json or {}) | dict(args.param or [])
    job = client.submit(
        args.model,
        args.method,
        args.dataset,
        args.dataset_id,
        params,
        args.batch_size,
        args.seed,
        target=_target(args),
    )
    if not (args.wait or args.download):
        _show(args, job, [_job_line(job)])
        return EXIT_OK
    _err(f"job {job['id']} queued")
    return _finish(client, job["id"], args)


def _finish(client: Client, job_id: int, args: argparse.Namespace) -> int:
    """Wait (with the progress bar), download if asked, print; 1 unless the job succeeded."""
    bar = ProgressBar(sys.stderr)
    try:
        job = client.wait(job_id, on_progress=None if args.quiet else bar, timeout=args.max_wait)
    except KeyboardInterrupt:
        bar.close()  # before the message, on a line of its own
        _err(f"stopped waiting; job {job_id} goes on (python -m api.client cancel {job_id})")
        return 130
    finally:
        bar.close()
    paths = []
    winner = ((job.get("target") or {}).get("outcome") or {}).get("winner_job_id")
    if job["status"] == "succeeded" and args.download:  # a search: the winner's artifacts
        chosen = client.job(winner) if winner is not None else job
        paths = client.download_job(chosen, args.download, args.kind or ())
    if args.json:
        _out(json.dumps({**job, "downloaded": [str(p) for p in paths]}, indent=1))
    else:
        _out("\n".join([_job_line(job), *(f"saved {p}" for p in paths)]))
    if job["status"] != "succeeded":
        _err(f"job {job_id} {job['status']}: {job['error_message'] or 'no result'}")
        return EXIT_JOB_FAILED
    return EXIT_OK


def _result(client: Client, args: argparse.Namespace) -> int:
    r = client.result(args.job)
    _show(args, r, _result_lines(args.job, r))
    return EXIT_OK


def _download(client: Client, args: argparse.Namespace) -> int:
    if args.job is not None:
        if len(args.targets) != 1:
            raise _UsageError("download --job JOB [--kind K] DIR: give one destination folder")
        paths = client.download_job(args.job, args.targets[0], args.kind or ())
    else:
        if len(args.targets) != 2 or not args.targets[0].isdigit():
            raise _UsageError("download ARTIFACT DEST, or download --job JOB [--kind K] DIR")
        paths = [client.download(int(args.targets[0]), args.targets[1])]
    _show(args, [str(p) for p in paths], [f"saved {p}" for p in paths])
    return EXIT_OK


def _jobs(client: Client, args: argparse.Namespace) -> int:
    page = client.jobs(args.status, args.method, args.model, args.limit)
    _show(
        args,
        page,
        [
            f"{j['id']:>6} {j['status']:<10} {j['method']:<10} {j['dataset']:<14} "
            f"{j['stage'] or '':<20} {j['progress']:4.0%}"
            for j in page["items"]
        ]
        + [f"{len(page['items'])} of {page['total']} jobs"],
    )
    return EXIT_OK


def _cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    asked = " (the worker stops it at its next step)" if job["status"] == "running" else ""
    _show(args, job, [_job_line(job) + asked])
    return EXIT_OK


def _catalogue(client: Client, args: argparse.Namespace) -> int:
    if args.command == "methods":
        rows = client.methods()
        _show(args, rows, [f"{m['name']:<12} {m['title']} ({m['paper']})" for m in rows])
    elif args.command == "architectures":
        rows = client.architectures()
        _show(
            args,
            rows,
            [
                f"{a['name']:<12} {a['title']} ({a['default_in_channels']}x"
                f"{a['default_input_size'][0]}x{a['default_input_size'][1]})"
                for a in rows
            ],
        )
    else:
        rows = client.datasets()
        _show(
            args,
            rows,
            [
                f"{'' if d['id'] is None else d['id']:>5} {d['name']:<20} {d['kind']:<12}"
                + ("" if d["available"] else " (not on this server)")
                for d in rows
            ],
        )
    return EXIT_OK


class _UsageError(Exception):
    pass


# --- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the command (SUPPRESS keeps the one given).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"$QS_URL, else {DEFAULT_URL}")
    common.add_argument("--token", default=argparse.SUPPRESS, help="$QS_TOKEN")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (30)"
    )
    parser = argparse.ArgumentParser(prog="python -m api.client", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[Client, argparse.Namespace], int], text: str) -> Any:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(run=run, parser=p)
        return p

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--download", metavar="DIR", help="then save its artifacts in DIR")
        p.add_argument("--kind", action="append", help="only artifacts of this kind (repeat)")
        p.add_argument("--max-wait", type=float, metavar="S", help="give up after S seconds")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = command("upload-model", _upload_model, "upload float weights for an architecture")
    p.add_argument("file")
    p.add_argument("--arch", required=True)
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--in-channels", type=int)
    p.add_argument("--input-size", type=input_size, metavar="HxW")
    p.add_argument("--name")
    p = command("upload-dataset", _upload_dataset, "upload an .npz or an ImageFolder archive")
    p.add_argument("file")
    p.add_argument("--name")
    p.add_argument("--kind", choices=["npz", "imagefolder"])
    p = command("submit", _submit, "submit a job (and --wait for it)")
    p.add_argument("--model", type=int, required=True, metavar="ID")
    p.add_argument("--method", required=True)
    one = p.add_mutually_exclusive_group(required=True)
    one.add_argument("--dataset", metavar="NAME", help="a built-in dataset")
    one.add_argument("--dataset-id", type=int, metavar="ID", help="an uploaded dataset")
    p.add_argument("--param", type=parse_param, action="append", metavar="KEY=VALUE")
    p.add_argument("--params-json", type=params_json, metavar="JSON")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--search",
        type=parse_search,
        metavar="PARAM=V1,V2,...",
        help="an accuracy-target search over one param, values from the smallest model up",
    )
    p.add_argument("--within", type=float, metavar="POINTS", help="smallest model within this")
    p.add_argument("--under", type=float, metavar="BYTES", help="most accurate model this small")
    p.add_argument("--parallel", type=int, default=2, help="child jobs at once (search)")
    p.add_argument(
        "--also-search",
        type=parse_arm,
        action="append",
        metavar="METHOD:PARAM=V1,V2,...",
        help="search another method's param too, e.g. lq_nets:w_bits=1,2,3,4 (repeat, up to "
        "3); the winner is the best model of all the methods",
    )
    p.add_argument(
        "--also-param",
        type=parse_arm_param,
        action="append",
        metavar="METHOD:KEY=VALUE",
        help="a fixed param of an --also-search method (repeat)",
    )
    p.add_argument(
        "--also-params",
        type=parse_arm_params,
        action="append",
        metavar="METHOD:JSON",
        help="fixed params of an --also-search method as a JSON object, e.g. "
        "'lq_nets:{\"epochs\": 15}' (--also-param pairs override it)",
    )
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    waiting(p)
    p = command("wait", lambda c, a: _finish(c, a.job, a), "follow a job until it ends")
    p.add_argument("job", type=int)
    waiting(p)
    command("result", _result, "a finished job's result").add_argument("job", type=int)
    command("cancel", _cancel, "cancel a job").add_argument("job", type=int)
    p = command("download", _download, "download an artifact, or a job's artifacts")
    p.add_argument("targets", nargs="+", metavar="ARG", help="ARTIFACT DEST, or with --job: DIR")
    p.add_argument("--job", type=int)
    p.add_argument("--kind", action="append", help="with --job: only this kind (repeat)")
    p = command("jobs", _jobs, "your jobs, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--method")
    p.add_argument("--model", type=int)
    p.add_argument("--limit", type=int, default=50)
    for name in ("methods", "architectures", "datasets"):
        command(name, _catalogue, f"the server's {name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    url = getattr(args, "url", None) or os.environ.get("QS_URL") or DEFAULT_URL
    token = getattr(args, "token", None) or os.environ.get("QS_TOKEN")
    try:
        with Client(url, token, timeout=getattr(args, "timeout", 30.0)) as client:
            return int(args.run(client, args))
    except _UsageError as exc:
        args.parser.error(str(exc))
    except ApiClientError as exc:
        hint = " (give a token: --token or $QS_TOKEN)" if exc.status == 401 and not token else ""
        _err(f"error: {exc}{hint}")
    return EXIT_ERROR
