"""Evaluation: A/B test statistics, segment significance and channel-policy simulation."""
