"""Channel choice by Thompson sampling, with its state in the profile store."""

from ray_apps.channels.bandit import NO_SEGMENT, ArmState, ChannelBandit, Choice

__all__ = ["NO_SEGMENT", "ArmState", "ChannelBandit", "Choice"]
