"""Synthetic input folder in the data contract, with planted structure and ground truth.

:func:`generate` writes ``users.csv``, ``orders.csv``, ``events.jsonl`` and
``impressions.csv`` (see :mod:`cluster.core.contract`) for a population whose behaviour
is known, so every model of the platform can be checked against the truth:

* customer archetypes with distinct purchase rates and basket values, tuned so that
  K-means on standardised log-RFM recovers them (docs/synthetic-data.md has the ARI);
* per-user category preferences (Dirichlet), reflected in orders and events;
* a logistic click model for ad impressions (the true probability is written);
* a planted churn day per user, after which the user neither orders nor acts;
* a weekly order pattern (weekday weights) on top of the hour-of-day profile;
* a promotion calendar (a price ratio per category and day) and a per-category own-price
  elasticity: an order line costs list price x quantity x the day's ratio, and an order's
  category and day lean towards cheap (category, day) pairs without changing any user's
  number of orders or active period;
* a small, exactly counted share of defective rows of every kind the contract names,
  so the ingest job's reconciliation report can be compared with ``expected``.

``style="varied"`` writes the same simulated world in other shapes the contract allows (placement
names as ad positions, other id patterns and lengths, ISO timestamps in other zones with fractions,
a BOM and CRLF line ends, cities, brands, channels and devices outside the built-in lists) and adds
users who exist only in ``users.csv``; see :func:`generate` and docs/synthetic-data.md.

Ground truth goes to ``out_dir/_truth/`` (``users.csv``, ``impressions.csv``,
``defects.csv``, ``promotions.csv``, ``manifest.json``); ingest reads only the contract file names.

Every row-level choice is drawn from a numpy ``Generator`` derived from ``seed``, one
independent stream per step, so the same seed gives the same bytes.

The package, one module per step (``__all__`` below is the public surface):

* ``params``: the documented parameters of the world (archetypes, categories, cities, channels,
  click model, funnel, promotions, timestamp formats);
* ``helpers``: small pure helpers (ID check digit, timestamps, the default style's lines);
* ``world``: the state every step adds to and the draws the steps share;
* ``users``, ``orders``, ``events``, ``impressions``: the population and what it does;
* ``defects``: the defect plan, the planting and each file's lines with the expected reconciliation;
* ``varied``: style ``"varied"``; ``truth``: the ``_truth/`` files; ``generator``: :func:`generate`.
"""

from cluster.datagen.defects import DEFECT_PLAN
from cluster.datagen.generator import GenerationSummary, generate
from cluster.datagen.helpers import id_check_digit
from cluster.datagen.params import (
    ARCHETYPES,
    CATEGORIES,
    CHANNELS,
    CITIES,
    CLICK_MODEL,
    DEVICES,
    FUNNEL,
    GENERATOR_VERSION,
    PROMOTIONS,
    TIMESTAMP_FORMATS,
    TRUTH_DIR,
    WEEKDAY_WEIGHTS,
    Archetype,
    Category,
)
from cluster.datagen.varied import (
    AD_POSITION_NAMES,
    REGISTERED_ONLY_ARCHETYPE,
    STYLES,
    VARIED_CHANNELS,
    VARIED_DEVICES,
    VARIED_TIMESTAMP_FORMATS,
)

__all__ = [
    "Archetype",
    "ARCHETYPES",
    "Category",
    "CATEGORIES",
    "CITIES",
    "CHANNELS",
    "DEVICES",
    "CLICK_MODEL",
    "PROMOTIONS",
    "WEEKDAY_WEIGHTS",
    "FUNNEL",
    "TIMESTAMP_FORMATS",
    "DEFECT_PLAN",
    "STYLES",
    "VARIED_TIMESTAMP_FORMATS",
    "AD_POSITION_NAMES",
    "VARIED_CHANNELS",
    "VARIED_DEVICES",
    "REGISTERED_ONLY_ARCHETYPE",
    "TRUTH_DIR",
    "GENERATOR_VERSION",
    "GenerationSummary",
    "generate",
    "id_check_digit",
]
