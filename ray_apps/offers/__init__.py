"""Personalised offers: rules over segment, CLV, propensity and churn risk."""
