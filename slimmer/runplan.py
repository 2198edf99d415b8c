"""The run plan: every decision of ``compress`` resolved once, from the config, before any work.

The stages read these flags instead of re-deriving them from option combinations: whether a
pruning schedule runs inside fine-tuning, whether the layer-folding phase runs, whether
reconstruction or regrowing is wanted, and what verification runs (batch sizes, sequence lengths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slimmer.config import CompressConfig

VERIFY_BATCHES = (1, 3)
"""Batch sizes every dynamic-batch export is verified at."""
VERIFY_LENGTH_SCALES = (1.0, 0.5)
"""Dynamic non-batch axes (e.g. a sequence length) are verified at their size and at half of it."""


@dataclass(frozen=True)
class RunPlan:
    """What a ``compress`` run will do. Built by :meth:`resolve`; immutable."""

    methods: tuple[str, ...]
    regularize: bool
    finetune: bool
    scheduled: bool  # a pruning schedule moves the masks during fine-tuning (pruned once, at the end)
    fold_phase: bool  # layer folding: linearize activations while fine-tuning, then fold and merge
    regrow: bool  # --regrow: the one-shot unstructured mask may move while fine-tuning
    reconstruct: bool  # least-squares reconstruction wanted (one-shot unstructured or channel pruning)
    channel: bool  # a PruningPlan is made and channels are physically removed
    verify_batches: tuple[int, ...]
    verify_length_scales: tuple[float, ...]

    @classmethod
    def resolve(cls, config: CompressConfig, *, dynamic_length: bool = False, batch: int | None = None) -> RunPlan:
        """Resolve the plan of ``config``; ``dynamic_length`` when an input has a dynamic non-batch axis,
        ``batch`` the user's batch size (the only one verified with ``--static-batch``)."""
        has_data = config.data is not None
        finetune = has_data and config.finetune_steps > 0
        scheduled = config.schedule != "oneshot" and config.finetune_steps > 0
        fold_phase = "fold" in config.methods and finetune
        wanted = config.reconstruct if config.reconstruct is not None else config.finetune_steps == 0
        reconstruct = bool(wanted) and has_data and not scheduled and not fold_phase and "nm" not in config.methods
        static_batch = batch if batch is not None else 1
        return cls(
            methods=tuple(config.methods),
            regularize=config.regularizer is not None,
            finetune=finetune,
            scheduled=scheduled,
            fold_phase=fold_phase,
            regrow=config.regrow,
            reconstruct=reconstruct,
            channel="channel" in config.methods,
            verify_batches=VERIFY_BATCHES if config.dynamic_batch else (static_batch,),
            verify_length_scales=VERIFY_LENGTH_SCALES if dynamic_length else (1.0,),
        )

    def to_dict(self) -> dict:
        return asdict(self)
