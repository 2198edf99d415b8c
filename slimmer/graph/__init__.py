"""Graph capture and channel analysis: which channels can be removed, together with what."""

from slimmer.graph.capture import CapturedGraph, capture
from slimmer.graph.groups import ChannelGroup, GroupMember, GroupSet, build_groups
from slimmer.graph.rules import RULES

__all__ = ["RULES", "CapturedGraph", "ChannelGroup", "GroupMember", "GroupSet", "build_groups", "capture"]
