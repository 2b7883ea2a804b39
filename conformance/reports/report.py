"""The report: a versioned JSON document, rewritten after every result, and a text summary.

Schema (``schema_version`` 2)::

    {
      "schema_version": 2, "suite_version": str, "complete": bool,
      "state": "running" | "complete" | "interrupted",
      "interruption": str | null,
      "candidate": {"spec": str, "name": str, "version": str | null,
                    "conventions": {"curvature": str, "empirical_fisher": str},
                    "capabilities": {field: value, ...} | null},
      "torch_version": str, "device": str, "profile": str,
      "timeout_s": float | null, "isolate": bool,
      "execution": "worker" | "isolate" | "in-process",
      "max_consecutive_timeouts": int, "maxfail": int | null, "max_time_s": float | null,
      "stopped": str | null,
      "summary": {"total": int, "ran": int, "passed": int, "failed": int, "error": int,
                  "skipped": int, "xfailed": int, "xpassed": int, "not_run": int},
      "not_run": [item id, ...],
      "unused_expected_failures": [pattern, ...],
      "results": [{"id", "check_id", "case_id", "status", "message", "observed", "tolerance",
                   "diagnosis", "reproduction": {"command", "problem"}, "duration_s",
                   "evidence": {...} | null, "scale": {...} | null,
                   "details": {...} | null}, ...],
      "scale_summary": {...} | null
    }

``candidate.conventions`` is the candidate's declared scale conventions (absent in older
reports: read it as the tutorial's). Version 2 added ``candidate.capabilities`` (the declared
:class:`Capabilities`, sets as sorted lists) and ``evidence``: the compared blocks of a failure's first wrong layer, downsampled to
at most 64 x 64, with its Kronecker tile sizes (see :mod:`kfac_conformance.comparison.evidence`). Readers
of version 1 reports (the HTML report, ``docs/generate_matrix.py``) treat both as absent.

``details`` (added within version 2; absent in older reports) is what a passing check
measured besides its error, e.g. the scale profile's probes per layer, the tolerance's basis,
the parameter count and the item's peak memory (:mod:`kfac_conformance.checks.scale`).

``scale`` (added within version 2; absent in older reports) is what a scale convention would
change for the item: ``{"verdict_scale": "absolute" | "relative" | "unknown", "answers":
[{"fisher_type", "loss", "reduction", "N", "R"}, ...], "failure": {...} | null}``, the
``failure`` (a scale-only failure: every compared layer a constant multiple of its target)
holding the answer's fields, ``T``, ``K``, ``tolerance``, ``against`` (the candidate's own
answer that was the target, or null) and ``layers`` ``[{"layer", "type", "S", "factor",
"residual"}, ...]``; null when the item converted no answer a convention governs (see
:mod:`kfac_conformance.comparison.scale_records`). ``scale_summary`` (also added within
version 2) is null while the run is running and when no item failed by a constant factor
only; otherwise
``{"scale_only_failures", "passing_items_judged", "items_left_out", "table": [{"factor",
"named", "fisher_type", "loss", "reduction", "layer_type", "N", "T", "S", "R", "K", "target",
"items"}, ...], "fitting_conventions": [{"curvature", "empirical_fisher"}, ...], "verdict",
"depends_on": [str, ...]}`` (see :mod:`kfac_conformance.reports.scale_summary`).

``status`` is one of ``passed``, ``failed``, ``error``, ``skipped``, ``xfailed``, ``xpassed``.
``ran`` counts the results recorded (every status); ``ran + not_run == total``.

The file is rewritten atomically after every result, so whatever stops the run, the file on
disk is valid JSON: ``complete`` false with ``state`` ``"running"`` when the process died
mid-run (a candidate's ``os._exit``, a kill), ``"interrupted"`` (with ``interruption``, e.g.
``"SIGINT"``) when it was stopped by a signal; ``not_run`` lists every planned item without a
result, the one that was running included.

``execution`` says where the checks ran: ``"worker"`` (a supervised worker process, the
default), ``"isolate"`` (a forked child per check) or ``"in-process"`` (``--no-supervise``).
``stopped`` is why a limit (``max_consecutive_timeouts``, ``maxfail``, ``max_time_s``; see
:mod:`kfac_conformance.execution.limits`) ended the run early, or null; the items it left then have
``error`` results whose message starts with ``not run:``, so the report is still complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kfac_conformance.checks.base import STATUSES
from kfac_conformance.contract.conventions import TUTORIAL, Conventions
from kfac_conformance.contract.loading import suite_version
from kfac_conformance.execution.result import Result
from kfac_conformance.reports.scale_summary import ScaleSummary, summarize

SCHEMA_VERSION = 2


def describe_capabilities(capabilities: object) -> dict | None:
    """A dataclass of claims as JSON: sets become sorted lists, nested dataclasses dicts."""
    if not dataclasses.is_dataclass(capabilities):
        return None

    def plain(value: object) -> object:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (set, frozenset)):
            return sorted(value, key=str)
        return value

    return plain(capabilities)


@dataclass
class Report:
    candidate_spec: str
    candidate_name: str
    candidate_version: str | None
    profile: str
    device: str
    planned: list[str]
    results: list[Result] = field(default_factory=list)
    unused_expected_failures: list[str] = field(default_factory=list)
    complete: bool = False
    interruption: str | None = None
    timeout_s: float | None = None
    isolate: bool = False
    capabilities: dict | None = None
    execution: str = "worker"
    max_consecutive_timeouts: int = 3
    maxfail: int | None = None
    max_time_s: float | None = None
    stopped: str | None = None
    # each result's JSON text, by id(result), with the result and the (status, message) it was
    # encoded with: a run rewrites its report after every result (see write)
    _encoded: dict[int, tuple[Result, str, str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        return "interrupted" if self.interruption else "running"

    def not_run(self) -> list[str]:
        """Planned items without a result, in plan order."""
        done = {result.item_id for result in self.results}
        return [item for item in self.planned if item not in done]

    def counts(self) -> dict[str, int]:
        counts = Counter(result.status for result in self.results)
        summary = {"total": len(self.planned), "ran": len(self.results)}
        summary.update({status: counts.get(status, 0) for status in STATUSES})
        summary["not_run"] = len(self.not_run())
        return summary

    @property
    def succeeded(self) -> bool:
        counts = self.counts()
        return self.complete and counts["failed"] == 0 and counts["error"] == 0

    def scale_summary(self) -> ScaleSummary | None:
        """Constant factors judged across the run (:mod:`~kfac_conformance.reports.scale_summary`)."""
        declared = (self.capabilities or {}).get("conventions", TUTORIAL.describe())
        return summarize(self.results, Conventions(**declared))

    def to_json(self) -> dict:
        return self._document([result.to_json() for result in self.results])

    def to_text(self) -> str:
        """:meth:`to_json` as JSON text, each result encoded once: re-encoding every result at
        every rewrite made a run's cost grow with the square of its length."""
        placeholder = "\x00results\x00"
        text = json.dumps(self._document(placeholder), indent=1, default=str)
        results = ",\n  ".join(self._encoded_result(result) for result in self.results)
        return text.replace(json.dumps(placeholder), f"[\n  {results}\n ]" if results else "[]", 1)

    def _encoded_result(self, result: Result) -> str:
        cached = self._encoded.get(id(result))
        if (
            cached is None
            or cached[0] is not result
            or cached[1:3] != (result.status, result.message)
        ):
            cached = (
                result,
                result.status,
                result.message,
                json.dumps(result.to_json(), default=str),
            )
            self._encoded[id(result)] = cached
        return cached[3]

    def _document(self, results: list[dict] | str) -> dict:
        # judged once the run is over: while it runs, each result would redo the judgement
        scales = None if self.state == "running" else self.scale_summary()
        return {
            "schema_version": SCHEMA_VERSION,
            "suite_version": suite_version(),
            "complete": self.complete,
            "state": self.state,
            "interruption": self.interruption,
            "candidate": {
                "spec": self.candidate_spec,
                "name": self.candidate_name,
                "version": self.candidate_version,
                # declared in the capabilities; a candidate without them follows the tutorial's
                "conventions": (self.capabilities or {}).get("conventions", TUTORIAL.describe()),
                "capabilities": self.capabilities,
            },
            "torch_version": torch.__version__,
            "device": self.device,
            "profile": self.profile,
            "timeout_s": self.timeout_s,
            "isolate": self.isolate,
            "execution": self.execution,
            "max_consecutive_timeouts": self.max_consecutive_timeouts,
            "maxfail": self.maxfail,
            "max_time_s": self.max_time_s,
            "stopped": self.stopped,
            "summary": self.counts(),
            "not_run": self.not_run(),
            "unused_expected_failures": self.unused_expected_failures,
            "results": results,
            "scale_summary": None if scales is None else scales.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Report:
        """The report :meth:`to_json` wrote; a setting an older schema lacks keeps its default."""
        candidate = data.get("candidate", {})
        results = [Result.from_json(result) for result in data.get("results", [])]
        settings = {name: data[name] for name in _SETTINGS if name in data}
        return cls(
            candidate.get("spec", ""),
            candidate.get("name", ""),
            candidate.get("version"),
            data.get("profile", ""),
            data.get("device", ""),
            [result.item_id for result in results] + list(data.get("not_run", [])),
            results,
            list(data.get("unused_expected_failures", [])),
            capabilities=candidate.get("capabilities"),
            **settings,
        )

    def write(self, path: str | Path) -> None:
        """Write atomically, so an interrupted run still leaves a valid (incomplete) report."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # one temporary file per process: two runs writing one report must not collide
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(self.to_text())
        os.replace(temporary, path)


# the report's fields that to_json writes under their own names
_SETTINGS = (
    "complete",
    "interruption",
    "timeout_s",
    "isolate",
    "execution",
    "max_consecutive_timeouts",
    "maxfail",
    "max_time_s",
    "stopped",
)
_NOT_RUN_SHOWN = 10
_SHORT = {
    "passed": "passed",
    "failed": "failed",
    "error": "errors",
    "skipped": "skipped",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
}


def summary_text(report: Report, quiet: bool = False) -> str:
    """What a terminal shows after a run, the most pressing first: every failure, error and
    unexpected pass (in full, or one line each when ``quiet``), what did not run, the skips
    grouped by reason, then the per-family table and the totals, last, where they stay in view.
    """
    problems = [r for r in report.results if r.status in ("failed", "error", "xpassed")]
    blocks = [[_one_line(r) for r in problems]] if quiet else [_in_full(r) for r in problems]
    scales = report.scale_summary()
    if scales is not None:
        blocks.append(scales.text_lines())
    not_run = report.not_run()
    if not_run and not report.complete:
        block = [f"NOT RUN ({len(not_run)}): " + ", ".join(not_run[:_NOT_RUN_SHOWN])]
        if len(not_run) > _NOT_RUN_SHOWN:
            block.append(f"  ... and {len(not_run) - _NOT_RUN_SHOWN} more (see the JSON report)")
        blocks.append(block)
    unused = report.unused_expected_failures
    warnings = [f"warning: expected failure {pattern!r} matched no check" for pattern in unused]
    blocks += [_skips_by_reason(report.results), warnings, _resources(report.results)]
    blocks += [_family_table(report.results), [_totals(report)]]
    return "\n\n".join("\n".join(block) for block in blocks if block)


def _resources(results: list[Result]) -> list[str]:
    """One line per item that measured its peak memory (the scale profile's), with its probes
    and parameter count, then how the peaks were read."""
    measured = [r for r in results if r.details and "peak_memory_bytes" in r.details]
    if not measured:
        return []
    lines = [f"MEASURED ({len(measured)}): time and peak memory per item"]
    for result in measured:
        details, peak = result.details, result.details["peak_memory_bytes"]
        lines.append(
            f"  {result.item_id}: {details.get('parameters', 0) / 1e6:.2f} M parameters, "
            f"{details.get('probes_per_layer')} probes per layer, {result.duration_s:.1f} s, "
            + ("peak memory unknown" if peak is None else f"peak {peak / 2**20:.0f} MiB")
        )
    methods = {r.details.get("peak_memory_method") for r in measured} - {None}
    lines += [f"  peak memory: {method}" for method in sorted(methods)]
    return lines


def _first_line(message: str) -> str:
    return message.strip().partition("\n")[0]


def _one_line(result: Result) -> str:
    diagnosis = f"; diagnosis: {result.diagnosis}" if result.diagnosis else ""
    return f"{result.status.upper()} {result.item_id}: {_first_line(result.message)}{diagnosis}"


def _in_full(result: Result) -> list[str]:
    lines = [f"{result.status.upper()} {result.item_id}"]
    lines.extend(f"  {line}" for line in result.message.strip().splitlines())
    if result.observed is not None:
        lines.append(f"  observed {result.observed:.3g}, tolerance {result.tolerance:.3g}")
    if result.diagnosis:
        lines.append(f"  diagnosis: {result.diagnosis}")
    if result.reproduction.get("command"):
        lines.append(f"  reproduce: {result.reproduction['command']}")
    return lines


def _skips_by_reason(results: list[Result]) -> list[str]:
    """``SKIPPED (n) by reason:`` and one line per reason (its first line), most frequent first."""
    reasons = Counter(_first_line(r.message) for r in results if r.status == "skipped")
    if not reasons:
        return []
    width = len(str(max(reasons.values())))
    lines = [f"SKIPPED ({sum(reasons.values())}) by reason:"]
    # most frequent first; among equals, in the order first met
    for reason, count in sorted(reasons.items(), key=lambda pair: -pair[1]):
        lines.append(f"  {count:>{width}}  {reason or '(no reason given)'}")
    return lines


def _family_table(results: list[Result]) -> list[str]:
    families: dict[str, Counter] = {}
    for result in results:
        families.setdefault(result.check_id.split("/")[0], Counter())[result.status] += 1
    width = max([len(name) for name in families] + [6])
    header = f"{'family':<{width}}  " + "  ".join(f"{_SHORT[s]:>7}" for s in STATUSES)
    lines = [header, "-" * len(header)]
    for family, counts in families.items():
        lines.append(f"{family:<{width}}  " + "  ".join(f"{counts.get(s, 0):>7}" for s in STATUSES))
    return lines


def _totals(report: Report) -> str:
    counts = report.counts()
    if report.complete:
        status = "complete"
    else:
        why = f", {report.interruption}" if report.interruption else ""
        status = f"INCOMPLETE{why}: {counts['not_run']} not run"
    return (
        f"{report.candidate_name}: {counts['ran']} checks ran of {counts['total']} ({status}): "
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
        f"{counts['skipped']} skipped, {counts['xfailed']} xfailed, {counts['xpassed']} xpassed"
    )
