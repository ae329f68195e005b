"""The benchmark's results as dataclasses: what ``parity.bench.suite.run`` returns, what
``bench.json`` holds (:meth:`BenchResults.to_json` / :meth:`BenchResults.from_json`), and
what the report prints.

A subject is named by ``(framework, variant)``; nothing is keyed by a display string. The
labels a person reads (a group's ``label``, a ratio's :attr:`RegRatio.name`, a target's
``name``) are derived from the fields and never looked up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: A measured fraction of a physical limit above this is refused: the limit is wrong (a
#: few % for timing noise between the step's and the limit's rounds).
LIMIT_SLACK = 1.05


@dataclass
class Subject:
    """One (framework, variant) of a group and what was measured of it.

    ``semantics`` groups subjects that must agree (the correctness guard). The rest is
    filled by :func:`parity.bench.harness.measure` and
    :func:`parity.bench.harness.check_guards`: set-up and compile time, the guard's
    fingerprint, the HLO traffic of a JAX step, the per-round medians and their median,
    min and max; ``error`` when the subject could not be timed.
    """

    framework: str
    variant: str
    semantics: str
    setup_s: float | None = None
    compile_s: float | None = None
    guard: list[float] | None = None
    hlo: dict[str, float] | None = None
    iters: int = 0
    rounds: list[float] = field(default_factory=list)
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    error: str | None = None
    guard_ok: bool = False
    guard_vs: str | None = None
    guard_err_over_tol: float | None = None

    @property
    def name(self) -> str:
        return f"{self.framework}/{self.variant}"

    @property
    def usable(self) -> bool:
        """Timed and correct: it may be compared with the others."""
        return self.error is None and self.median_s is not None and self.guard_ok


@dataclass
class Group:
    """Subjects timed side by side in the same rounds: one case (``spec``, the workers'
    JSON protocol) at one size."""

    label: str
    spec: dict[str, Any]
    subjects: list[Subject]
    params: int | None = None

    def subject(self, framework: str, variant: str) -> Subject | None:
        return next(
            (s for s in self.subjects if (s.framework, s.variant) == (framework, variant)), None
        )

    def time(self, framework: str, variant: str) -> float | None:
        """A subject's median time; ``None`` if it was not timed or failed the guard."""
        s = self.subject(framework, variant)
        return s.median_s if s is not None and s.usable else None


@dataclass
class Roof:
    """The limit of one access pattern at one size: the fastest of several kernels that
    move exactly the step's bytes (read-modify-write in place, no write-allocate)."""

    pattern: str  # "3R/2W": arrays read and written per element
    bytes_per_param: int
    best: str  # the fastest implementation ("numba", "torch", "jax")
    seconds: float
    gbps: dict[str, float]  # every implementation's rate


@dataclass
class OptRow:
    """An optimizer-step group, derived. Times in seconds; ratios paired by round."""

    label: str
    opt: str
    params: int
    many: bool
    jaxreg: str  # the jaxreg path judged: "flat", "fused" or "xla"
    jaxreg_s: float
    torch_s: dict[str, float]
    best_torch: str
    ratio_best: float
    ratio_fused: float
    spread_best: list[float] | None
    spread_fused: list[float] | None
    jaxreg_xla_s: float | None
    jaxreg_fused_s: float | None
    jaxreg_flat_s: float | None
    jaxreg_tree_s: float | None
    ratio_tree_best: float | None
    ratio_fused_xla: float | None
    dropped: dict[str, str]
    ns_per_param: float
    roof: Roof | None = None
    roof_fraction: float | None = None  # roof time ÷ jaxreg time (paired by round)
    torch_fused_roof_fraction: float | None = None
    dtype: str = "float32"
    hlo_fusions_per_leaf: float | None = None
    hlo_bytes_per_param: float | None = None
    fused_hlo_bytes_per_param: float | None = None


@dataclass
class TrainRow:
    label: str
    jaxreg_s: float
    best_eager: str
    ratio_best_eager: float
    spread_best_eager: list[float] | None
    ratio_compile: float | None


#: What a regularization-overhead ratio compares, and how it reads.
REG_RATIOS = {
    "decay_on_off": "weight decay on ÷ off",
    "decay_on_off_xla": "weight decay on ÷ off (XLA path)",
    "torch_decay_on_off": "torch fused, decay on ÷ off",
    "prox_over_plain": "+ proximal L1 ÷ plain step",
    "penalty_over_decay": "L2 penalty in the loss ÷ decay transform",
}


@dataclass
class RegRatio:
    """A regularization-overhead ratio of one optimizer (``what``: a :data:`REG_RATIOS`
    key), with its per-round spread."""

    opt: str
    what: str
    value: float
    spread: list[float] | None = None

    @property
    def name(self) -> str:
        return f"{self.opt}: {REG_RATIOS[self.what]}"


@dataclass
class Target:
    """A target: a value against a bound (``at_most`` / ``at_least``), or none (reported
    only). ``of_limit``: the value is a fraction of a physical limit; above
    :data:`LIMIT_SLACK` it is not judged -- the limit was mis-measured."""

    name: str
    value: float
    at_most: float | None = None
    at_least: float | None = None
    spread: list[float] | None = None
    of_limit: bool = False

    @property
    def limit_invalid(self) -> bool:
        return self.of_limit and self.value > LIMIT_SLACK

    @property
    def bound(self) -> str:
        if self.limit_invalid:
            return "limit invalid"
        if self.at_most is not None:
            return f"≤ {self.at_most}"
        if self.at_least is not None:
            return f"≥ {self.at_least}"
        return "(reported)"

    @property
    def met(self) -> bool | None:
        if self.limit_invalid or (self.at_most is None and self.at_least is None):
            return None
        if self.at_most is not None:
            return self.value <= self.at_most
        return self.value >= self.at_least

    @property
    def within_noise(self) -> bool:
        """The bound lies inside the per-round spread of the value."""
        b = self.at_most if self.at_most is not None else self.at_least
        return self.met is not None and bool(self.spread) and self.spread[0] <= b <= self.spread[1]


@dataclass
class Scaling:
    params: list[int]
    ns_per_param: list[float]
    slopes: list[float]
    linear_from: int


@dataclass
class Derived:
    """Ratios, roofs, scaling and targets derived from the groups (:func:`derive`)."""

    stream: dict[str, float]  # in-place a += s·b, GB/s per implementation
    stream_n: int | None
    opt: list[OptRow]
    train: list[TrainRow]
    reg: list[RegRatio]
    reg_params: int | None
    reg_hlo_bytes: dict[str, list[float]]  # opt -> [with decay, without]
    scaling: dict[str, Scaling]
    targets: list[Target]
    guards_ok: bool
    excluded: list[str]


@dataclass
class Environment:
    """Where the run ran: processor and accelerator, threads, versions, the config."""

    cpu: str
    device: str  # "cpu", "gpu" or "tpu": where the timed steps ran
    accelerator: dict[str, Any] | None  # name, driver, memory (GPU/TPU runs)
    threads: int
    affinity: list[int]
    python: str
    versions: dict[str, str]
    config: dict[str, Any]
    date: str


@dataclass
class BenchResults:
    environment: Environment
    groups: list[Group]
    derived: Derived
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``bench.json``); computed target fields included for readers."""
        out = dataclasses.asdict(self)
        for t, d in zip(self.derived.targets, out["derived"]["targets"]):
            d.update(bound=t.bound, met=t.met, within_noise=t.within_noise,
                     limit_invalid=t.limit_invalid)  # fmt: skip
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResults:
        """The inverse of :meth:`to_json`."""
        d = dict(data["derived"])
        d["opt"] = [
            OptRow(**{**r, "roof": Roof(**r["roof"]) if r.get("roof") else None}) for r in d["opt"]
        ]
        d["train"] = [TrainRow(**r) for r in d["train"]]
        d["reg"] = [RegRatio(**r) for r in d["reg"]]
        d["scaling"] = {k: Scaling(**v) for k, v in d["scaling"].items()}
        fields = {f.name for f in dataclasses.fields(Target)}
        d["targets"] = [Target(**{k: v for k, v in t.items() if k in fields}) for t in d["targets"]]
        groups = [
            Group(**{**g, "subjects": [Subject(**s) for s in g["subjects"]]})
            for g in data["groups"]
        ]
        return cls(Environment(**data["environment"]), groups, Derived(**d), data["seconds"])
