"""The planner's MACs estimate from index counts equals the estimate from the plan's index sets."""

from __future__ import annotations

import torch
from torch import nn

from slimmer.graph.groups import GroupSet, build_groups
from slimmer.graph.macs import MacsByWeight
from slimmer.structures.budget import removed_by_order, removed_counts
from slimmer.structures.channel import group_scores
from slimmer.structures.plan import PlannedGroup, PruningPlan

X = torch.randn(1, 3, 8, 8)


class FlattenConcat(nn.Module):
    """A concat of two branches, then flatten into a linear layer: one channel holds 16 input
    features of ``fc`` (4×4 positions), and the concat puts two groups on one tensor dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(3, 20, 3, padding=1)
        self.c = nn.Conv2d(32, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.relu(self.c(y)).flatten(1))


def test_counts_estimate_matches_the_index_set_estimate_for_every_keep_count():
    torch.manual_seed(0)
    model = FlattenConcat().eval()
    groupset = build_groups(model, (X,))
    groups = list(groupset.prunable)
    assert len(groups) == 3
    by_weight = MacsByWeight(model, (X,))
    order = {
        g.id: sorted(range(g.channels), key=lambda j, s=group_scores(g, model, "l1", 0): -float(s[j])) for g in groups
    }
    table = removed_by_order(groups, order, by_weight)
    assert any(cum[-1] == 24 * 16 for rows in table for _, _, cum in rows)  # fc's in-features: 16 per channel
    for keeps in ([12, 20, 24], [11, 20, 24], [6, 5, 24], [1, 1, 1], [12, 3, 7]):
        plan = PruningPlan(
            [
                PlannedGroup(g.id, g.signature, g.channels, sorted(order[g.id][:k]))
                for g, k in zip(groups, keeps, strict=True)
            ],
            criterion="l1",
            scope="global",
            sparsity=None,
            macs_target=0.5,
            round_to=1,
            seed=0,
            notes=[],
        ).bind(GroupSet(groups))
        assert by_weight.estimate_counts(removed_counts(table, keeps)) == by_weight.estimate(plan.removals())
