"""Budget allocation over channels as a linear programme (PuLP, CBC)."""

from ray_apps.budget.optimizer import (
    OBJECTIVES,
    Allocation,
    Channel,
    ConstraintReport,
    optimize_budget,
)

__all__ = ["OBJECTIVES", "Allocation", "Channel", "ConstraintReport", "optimize_budget"]
