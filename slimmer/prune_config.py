"""The pruning stage's config (``slimmer.prune``): the methods, their target, criterion and scope, the
schedule, each checked once on creation; and the criterion used when none is given."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from slimmer.errors import ConfigError
from slimmer.registry import did_you_mean
from slimmer.stage_base import SCOPES, StageConfig, check_fraction


def default_criterion(methods: tuple[str, ...], regularizer: str | None = None) -> str:
    """The criterion when ``--criterion`` is not given: LAMP (Lee et al., ICLR 2021) for unstructured
    pruning alone, magnitude otherwise (channel norms, N:M, and after a regularizer, which was measured with
    magnitude). At 90% sparsity LAMP recovered more than global magnitude on every member of the model set,
    because global magnitude thins some layers to almost nothing (docs/BENCHMARKS.md "Accuracy on the model
    set"). Within one tensor LAMP orders weights as magnitude does, so only the split between layers differs."""
    if tuple(methods) == ("unstructured",) and regularizer is None:
        return "lamp"
    return "magnitude"


MAX_SEED = 2**63 - 2**20
"""The largest --seed: random streams are seeded with the seed plus an offset (a batch, an epoch, a rank),
which must stay within the 64-bit range torch and numpy take."""


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """The pruning stage (``slimmer.prune``): the methods, their target, criterion and scope, the schedule."""

    methods: tuple[str, ...] = ("unstructured",)
    sparsity: float | None = None
    nm: str = "2:4"
    sparsity_tolerance: float = 0.01
    macs_target: float | None = None
    criterion: str | None = None  # None (not given): default_criterion(methods, regularizer), set on creation
    scope: str = "global"
    schedule: str = "oneshot"
    round_to: int | str | None = None  # None: prune_channel.DEFAULT_ROUND_TO; "relative": structures/rounding.py
    prune_parts: str | None = None
    latency_aware: bool = False
    latency_costs: Path | None = None  # --latency-costs FILE (read and checked on creation: latency_constants)
    speedup: float | None = None
    seed: int = 0
    output_name: str | None = None
    search_steps: int = 200  # --method search: bi-level search steps (slimmer/search_run.py)
    regularizer: str | None = None  # only for the default criterion; RegularizeConfig checks it

    def __post_init__(self) -> None:
        from slimmer import choices
        from slimmer.structures.latency_cost import constants_for

        if self.criterion is None:
            object.__setattr__(self, "criterion", default_criterion(self.methods, self.regularizer))
        methods = choices.methods()
        if not self.methods:
            raise ConfigError("--method: give at least one of " + ", ".join(methods))
        for m in self.methods:
            if m not in methods:
                raise ConfigError(f"--method {m!r} is not one of {', '.join(methods)}.{did_you_mean(m, methods)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--method {','.join(self.methods)}: a method is named twice")
        if self.sparsity is not None:
            check_fraction("--sparsity", self.sparsity, low_open=False, high_open=True)
        check_fraction("--sparsity-tolerance", self.sparsity_tolerance, low_open=False, high_open=True)
        if self.macs_target is not None:
            check_fraction("--macs-target", self.macs_target, low_open=True, high_open=False)
            if not {"channel", "search"} & set(self.methods):
                raise ConfigError("--macs-target applies to --method channel or search", hint="add --method channel")
            if self.sparsity is not None and "channel" in self.methods and "unstructured" not in self.methods:
                # with unstructured,channel the sparsity is the unstructured one; alone, one would be dropped
                raise ConfigError(
                    f"--sparsity {self.sparsity:g} and --macs-target {self.macs_target:g} both set how many "
                    "channels --method channel removes",
                    hint="give one: --macs-target keeps a fraction of the MACs, --sparsity a fraction of channels",
                )
        self._check_speedup()
        if self.latency_aware and "channel" not in self.methods:
            raise ConfigError("--latency-aware applies to --method channel", hint="add --method channel")
        if self.latency_aware and self.scope != "global":
            raise ConfigError("--latency-aware ranks channels across layers: use --scope global")
        # --latency-costs is read and checked now, before any work (its rules: latency_cost.constants_for)
        costs = constants_for(self.latency_costs, latency_aware=self.latency_aware, speedup=self.speedup)
        object.__setattr__(self, "_latency_constants", costs)
        if self.criterion not in choices.criteria():
            known = choices.criteria()
            raise ConfigError(
                f"--criterion {self.criterion!r} is not one of {', '.join(known)}.{did_you_mean(self.criterion, known)}"
            )
        if self.criterion == "head-importance" and "channel" not in self.methods:  # criteria/head_importance.py
            raise ConfigError(
                "--criterion head-importance gates whole heads and channels; it ranks for --method channel only",
                hint="add --method channel, or choose another criterion",
            )
        if "nm" in self.methods:
            self._check_nm()
        if "search" in self.methods:
            self._check_search()
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.schedule not in choices.schedules():
            raise ConfigError(f"--schedule {self.schedule!r} is not one of {', '.join(choices.schedules())}")
        if self.schedule != "oneshot" and tuple(self.methods) not in (("unstructured",), ("channel",)):
            raise ConfigError(
                f"--schedule {self.schedule} works with --method unstructured or --method channel alone",
                hint="use --schedule oneshot to combine methods (e.g. channel,nm) or with nm and fold",
            )
        if self.round_to is not None:
            from slimmer.structures.rounding import check_round_to

            check_round_to(self.round_to)  # an int ≥ 1 or "relative"; ConfigError otherwise
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")

    @property
    def latency_constants(self):
        """The ``LatencyCosts`` latency-aware ranking uses: the ``--latency-costs`` file's, else the built-ins."""
        return self._latency_constants  # type: ignore[attr-defined]

    def _check_speedup(self) -> None:
        if self.speedup is None:
            return
        if not (isinstance(self.speedup, (int, float)) and math.isfinite(self.speedup) and self.speedup > 1):
            raise ConfigError(f"--speedup must be a number > 1, got {self.speedup!r}")
        if "channel" not in self.methods:
            raise ConfigError("--speedup applies to --method channel", hint="add --method channel")
        if self.macs_target is not None or self.sparsity is not None:
            raise ConfigError("--speedup chooses the MACs target itself: drop --macs-target and --sparsity")
        if self.schedule != "oneshot":
            raise ConfigError(
                f"--speedup measures one plan; --schedule {self.schedule} changes the plan during fine-tuning",
                hint="use --macs-target with a schedule, or --schedule oneshot with --speedup",
            )

    def _check_search(self) -> None:
        if not isinstance(self.search_steps, int) or self.search_steps < 1:
            raise ConfigError(f"--search-steps must be an integer ≥ 1, got {self.search_steps!r}")
        if {"channel", "unstructured"} & set(self.methods):
            raise ConfigError(
                f"--method {','.join(self.methods)}: search chooses the channels itself",
                hint="use --method search alone (or with nm / fold)",
            )
        if self.macs_target is None:
            raise ConfigError("--method search searches under a MACs target: pass --macs-target, e.g. 0.5")
        if self.sparsity is not None:
            raise ConfigError("--method search prunes to --macs-target, not --sparsity", hint="drop --sparsity")

    def _check_nm(self) -> None:
        from slimmer.structures.nm import parse_nm

        n, m = parse_nm(self.nm)
        if self.sparsity is not None and not {"unstructured", "channel"} & set(self.methods):
            raise ConfigError(
                f"--sparsity {self.sparsity:g} does not apply to --method nm: the pattern {n}:{m} sets the "
                f"sparsity of every pruned layer to {1 - n / m:g}",
                hint="drop --sparsity, or choose the pattern with --nm (e.g. --nm 1:4 for 75%)",
            )

    @property
    def target_sparsity(self) -> float:
        """The sparsity asked for, or the default 0.5 when none was given."""
        return 0.5 if self.sparsity is None else self.sparsity
