"""Channel rules for pooling, upsampling, reductions and softmax.

Pooling and upsampling keep (batch, channel) dims and make new spatial dims. A reduction or a
softmax over a channel dim mixes channels without a weight, so that dim becomes a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slimmer.graph.space import Labels, RuleContext


def register_pooling_rules(register: Callable[..., Callable[[Any], Any]]) -> None:
    """Register the pooling, upsampling, reduction and softmax rules with ``register``."""

    def _spatial(ctx: RuleContext, spatial_dims: int) -> Labels:
        """Leading dims (batch, channels) pass through; the last ``spatial_dims`` are new."""
        xl = ctx.labels(ctx.node.args[0])
        out_shape = ctx.out_shapes()[0]
        out = ctx.fresh(out_shape)
        keep = len(out_shape) - spatial_dims
        out[:keep] = xl[:keep]
        ctx.barrier(xl[keep:], "pooled dim")
        return out

    for _dims in (1, 2, 3):
        _names = [
            f"aten.{k}{_dims}d.default" for k in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")
        ]
        _names += [f"aten.upsample_nearest{_dims}d.vec", f"aten.upsample_nearest{_dims}d.default"]
        _names += [
            f"aten.{m}.vec"
            for m in ("upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d")
            if m.endswith(f"{_dims}d")
        ]

        def _rule(ctx: RuleContext, _d: int = _dims) -> Any:
            out = _spatial(ctx, _d)
            if isinstance(ctx.node.meta.get("val"), (list, tuple)):  # (values, indices)
                return [out, [*out[:-_d], *ctx.fresh(ctx.out_shapes()[1][-_d:])]]
            return out

        register(*_names, f"aten.max_pool{_dims}d_with_indices.default")(_rule)

    def _reduce(ctx: RuleContext, dims: list[int] | None, keepdim: bool, what: str) -> Labels:
        xl = ctx.labels(ctx.arg(0, "self"))
        n = len(xl)
        reduced = set(range(n)) if not dims else {d % n for d in dims}
        ctx.barrier([xl[d] for d in reduced], what)
        out: Labels = []
        for d in range(n):
            if d not in reduced:
                out.append(xl[d])
            elif keepdim:
                out.append(ctx.space.fresh(1))
        return out

    @register(
        "aten.mean.dim",
        "aten.sum.dim_IntList",
        "aten.amax.default",
        "aten.amin.default",
        "aten.std.correction",
        "aten.var.correction",
    )
    def reduce(ctx: RuleContext) -> Labels:
        """Reduced dims disappear; a channel reduced without a weight cannot be masked exactly."""
        dims = ctx.arg(1, "dim")
        keepdim = bool(ctx.arg(2 if "correction" not in ctx.op else 3, "keepdim", False))
        return _reduce(ctx, list(dims) if isinstance(dims, (list, tuple)) else None, keepdim, "reduced dim")

    @register("aten.mean.default", "aten.sum.default")
    def reduce_all(ctx: RuleContext) -> Labels:
        return _reduce(ctx, None, False, "reduced dim")

    @register("aten.softmax.int", "aten._softmax.default", "aten.log_softmax.int", "aten._log_softmax.default")
    def softmax(ctx: RuleContext) -> Labels:
        xl = ctx.labels(ctx.arg(0, "self"))
        ctx.barrier(xl[int(ctx.arg(1, "dim")) % len(xl)], "softmax dim")
        return list(xl)
