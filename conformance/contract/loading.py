"""Resolving ``SPEC`` strings: a registered name, ``module:attr`` or ``path/to/file.py:attr``."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path

import torch

from kfac_conformance.cases.canonical import Case
from kfac_conformance.contract.problem import Candidate, Problem, Request

CANDIDATE_GROUP = "kfac_conformance.candidates"
# a case factory: no arguments, one problem or a list of them, fresh on every call
ProblemFactory = Callable[[], "Problem | Sequence[Problem]"]


class SpecError(ValueError):
    """A ``SPEC`` that names nothing usable; the message says why."""


class LibraryMissing(SpecError):
    """A candidate whose third-party library is not installed; the message is one line that
    names the install command."""


@dataclass(frozen=True)
class Requirement:
    """The third-party distributions a candidate needs (its class attribute ``requires``), and
    the extra of ``pyproject.toml`` that installs them.

    Adapters import their library only inside ``compute``; without this declaration a missing
    library would surface as an error on every item (and as the candidate "raising" where
    raising is allowed) instead of once, before the run.
    """

    distributions: tuple[str, ...]
    extra: str

    def install_command(self) -> str:
        """The command that installs the extra from a checkout (the project is not on PyPI)."""
        return f'pip install -c constraints.txt -e ".[{self.extra}]"'

    def versions(self) -> dict[str, str | None]:
        """Each distribution's installed version, ``None`` where it is not installed."""
        return {name: installed_version(name) for name in self.distributions}

    def describe(self) -> str:
        """``"asdfghjkl 0.1a5"``, or ``"not installed: asdfghjkl (pip install ...)"``."""
        versions = self.versions()
        missing = [name for name, found in versions.items() if found is None]
        if missing:
            return f"not installed: {', '.join(missing)} ({self.install_command()})"
        return ", ".join(f"{name} {found}" for name, found in versions.items())

    def check(self, candidate: str) -> None:
        """Raise :class:`LibraryMissing` unless every distribution is installed."""
        missing = [name for name, found in self.versions().items() if found is None]
        if missing:
            raise LibraryMissing(
                f"candidate {candidate!r} needs {', '.join(missing)}, which is not installed; "
                f"from a checkout of kfac-conformance run: {self.install_command()}"
            )


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, ``None`` where it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def registered_candidates() -> dict[str, Callable[[], Candidate]]:
    return {ep.name: ep for ep in entry_points(group=CANDIDATE_GROUP)}


def _resolve(spec: str, what: str) -> object:
    if ":" not in spec:
        raise SpecError(
            f"{what} {spec!r} is neither a registered name nor of the form module:attr or file.py:attr"
        )
    location, _, attr = spec.rpartition(":")
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise SpecError(f"{what} file {location!r} does not exist")
        name = f"_kfac_conformance_user_{path.stem}_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as error:
            raise SpecError(
                f"cannot import module {location!r} for {what} {spec!r}: {error}"
            ) from error
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{location!r} has no attribute {attr!r} (from {what} {spec!r})") from None


def _instantiate(obj: object) -> object:
    return (
        obj() if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "compute")) else obj
    )


def load_candidate(spec: str) -> Candidate:
    """The candidate for ``spec``; ``attr`` may be a candidate, its class or a zero-argument factory."""
    registered = registered_candidates()
    if spec in registered:
        obj = registered[spec].load()
    else:
        obj = _resolve(spec, "candidate")
    requirement = getattr(obj, "requires", None)
    if isinstance(requirement, Requirement):
        requirement.check(spec)
    candidate = _instantiate(obj)
    missing = missing_members(candidate)
    if missing:
        raise SpecError(
            f"candidate {spec!r} lacks {missing}: a Candidate has name, capabilities and compute()"
        )
    return candidate


def missing_members(candidate: object) -> list[str]:
    """What ``candidate`` lacks of a :class:`Candidate`'s name, capabilities and compute()."""
    return [name for name in ("name", "capabilities", "compute") if not hasattr(candidate, name)]


class CaseFactory:
    """A loaded ``--case SPEC``: calling it gives fresh problems (a list).

    ``drawn`` is ``(case, request)`` when the factory rebuilds one drawn example (a
    ``kfac-conformance fuzz`` case file, whose factory carries ``case`` and ``request``
    attributes): the case with its exactness map and the request it was drawn with, which
    the plan needs to run the properties that ran on it. Otherwise it is ``None``.
    """

    def __init__(
        self, problems: Callable[[], list[Problem]], drawn: tuple[Case, Request] | None
    ) -> None:
        self.problems, self.drawn = problems, drawn

    def __call__(self) -> list[Problem]:
        return self.problems()


def load_case_factory(spec: str | ProblemFactory) -> CaseFactory:
    """A zero-argument factory of fresh problems for ``--case SPEC``, or for a factory given
    itself (its qualified name then stands for the spec in messages); checked to be
    deterministic."""
    if callable(spec):
        factory, spec = spec, getattr(spec, "__qualname__", repr(spec))
    else:
        factory = _resolve(spec, "case")
    if not callable(factory):
        raise SpecError(
            f"case {spec!r} must be a zero-argument factory returning a Problem or a list of them"
        )

    def problems() -> list[Problem]:
        made = factory()
        made = list(made) if isinstance(made, (list, tuple)) else [made]
        for problem in made:
            if not isinstance(problem, Problem):
                raise SpecError(
                    f"case factory {spec!r} returned {type(problem).__name__}, not a Problem"
                )
        return made

    made = problems()
    for first, second in zip(made, problems(), strict=True):
        difference = _first_difference(first, second)
        if difference:
            raise SpecError(
                f"case factory {spec!r} is not deterministic: two calls gave problems "
                f"{first.case_id!r} with different {difference}; seed what it draws (e.g. build "
                "the model under torch.random.fork_rng() after torch.manual_seed)"
            )
    return CaseFactory(problems, _drawn_example(spec, factory, made))


def _drawn_example(spec: str, factory: object, made: list[Problem]) -> tuple[Case, Request] | None:
    case, request = getattr(factory, "case", None), getattr(factory, "request", None)
    if case is None and request is None:
        return None
    if not (isinstance(case, Case) and isinstance(request, Request)):
        raise SpecError(
            f"case factory {spec!r} carries a drawn example: its 'case' must be a Case and its "
            f"'request' a Request, got {type(case).__name__} and {type(request).__name__}"
        )
    if [problem.case_id for problem in made] != [case.id]:
        raise SpecError(
            f"case factory {spec!r} carries the drawn case {case.id!r}, so it must return that "
            f"one problem; it returned {[problem.case_id for problem in made]}"
        )
    return case, request


def _first_difference(first: Problem, second: Problem) -> str | None:
    if first.case_id != second.case_id or first.layers != second.layers:
        return "ids or layers"
    first_params, second_params = first.model.state_dict(), second.model.state_dict()
    if first_params.keys() != second_params.keys():
        return "parameter names"
    for name, value in first_params.items():
        if not torch.equal(value, second_params[name]):
            return f"parameter {name!r}"
    if len(first.batches) != len(second.batches):
        return "numbers of batches"
    for index, ((X1, y1), (X2, y2)) in enumerate(zip(first.batches, second.batches, strict=True)):
        if not (torch.equal(X1, X2) and torch.equal(y1, y2)):
            return f"data in batch {index}"
    return None


@functools.cache
def suite_version() -> str:
    # read once per process: every rewrite of a running report asks for it
    return installed_version("kfac-conformance") or "unknown"


def candidate_availability() -> dict[str, str]:
    """Each registered candidate's library, for ``list-candidates``: its installed version,
    ``"not installed: ..."`` with the install command, or ``"built in"`` for a candidate that
    declares no :class:`Requirement`. Loads the entry points, never the libraries."""
    availability = {}
    for name, entry_point in sorted(registered_candidates().items()):
        requirement = getattr(entry_point.load(), "requires", None)
        availability[name] = (
            requirement.describe() if isinstance(requirement, Requirement) else "built in"
        )
    return availability
