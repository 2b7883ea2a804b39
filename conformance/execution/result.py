"""The outcome of one item: its status, message, measurement, diagnosis and reproduction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class Result:
    check_id: str
    case_id: str
    status: str
    message: str = ""
    observed: float | None = None
    tolerance: float | None = None
    diagnosis: str | None = None
    reproduction: dict = field(default_factory=dict)
    duration_s: float = 0.0
    evidence: dict | None = None  # the compared blocks of a failure, see evidence.py
    scale: dict | None = None  # what a scale convention would change, see scale_records.py
    # what a passing check measured besides its error (probes, peak memory), JSON-able
    details: dict | None = None

    @property
    def item_id(self) -> str:
        return f"{self.check_id}[{self.case_id}]"

    def to_json(self) -> dict:
        """A JSON-safe dict: a non-finite number becomes its string ("inf", "nan")."""
        fields = asdict(self)
        for name in ("observed", "tolerance"):
            value = fields[name]
            if value is not None and not math.isfinite(value):
                fields[name] = str(value)
        return {"id": self.item_id, **fields}

    @classmethod
    def from_json(cls, data: dict) -> Result:
        """The result :meth:`to_json` wrote (fields a report of an older schema lacks keep
        their defaults)."""
        known = {f.name for f in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        for name in ("observed", "tolerance"):
            if isinstance(values.get(name), str):  # "inf", "nan"
                values[name] = float(values[name])
        return cls(**values)
