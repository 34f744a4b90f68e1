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
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.core.contract import ACTIONS, dataset

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

log = logging.getLogger(__name__)

#: Bumped whenever the same seed would produce different bytes.
GENERATOR_VERSION = "2"
#: Sub-folder of the output folder that holds the ground truth.
TRUTH_DIR = "_truth"

_DAY = 86_400
#: Asia/Shanghai has been UTC+8 without daylight saving since 1991.
_TZ_OFFSET_S = 8 * 3600
_TZ_NAME = "Asia/Shanghai"

Progress = Callable[[str, float], None]

# ---------------------------------------------------------------------------------------------
# Documented parameters (docs/synthetic-data.md repeats every one of them).
# ---------------------------------------------------------------------------------------------

#: Share of rows written in each accepted timestamp format, in every timestamp column.
TIMESTAMP_FORMATS: tuple[tuple[str, float], ...] = (
    ("local", 0.80),  # 2026-03-01 10:00:00, Asia/Shanghai wall time
    ("iso_offset", 0.12),  # 2026-03-01T10:00:00+08:00
    ("epoch_ms", 0.08),  # 1772330400123 (UTC epoch milliseconds, as a string)
)

#: Relative weight of each local hour of the day for orders, sessions and display ads.
_HOUR_WEIGHTS = np.array(
    [3.0, 1.8, 1.0, 0.6, 0.4, 0.4, 0.7, 1.5, 2.8, 3.8, 4.5, 4.8,
     4.5, 4.0, 4.2, 4.3, 4.2, 4.3, 4.6, 5.2, 6.2, 7.0, 6.5, 4.8]
)

#: Relative weight of each local weekday for orders, Monday first (weekend shopping peak).
#: Browsing sessions and impressions keep a flat week.
WEEKDAY_WEIGHTS = np.array([0.85, 0.80, 0.85, 0.90, 1.10, 1.35, 1.25])

#: Promotion calendar: every (category, day) is independently a promotion day with probability
#: ``share``; a promotion day sells the whole category at list price x one of ``ratios`` (drawn
#: uniformly), other days at list price. Independent days keep price apart from weekday and trend.
PROMOTIONS: dict[str, Any] = {
    "share": 0.35,
    "ratios": (0.90, 0.80, 0.70),
}


@dataclass(frozen=True)
class Category:
    """One product category of the catalogue.

    Attributes:
        name: Category name as written in orders and events.
        median_price: Median unit price in CNY of the category's items.
        price_sigma: Log-normal sigma of unit prices across the category's items.
        brands: Brands the category's items are drawn from.
        male_tilt: Dirichlet weight multiplier for male users (female users get ``1 / male_tilt``).
        elasticity: Own-price elasticity e: an order leans to a (category, day) pair in proportion
            to ``price_ratio ** -e`` (see :data:`PROMOTIONS`).
    """

    name: str
    median_price: float
    price_sigma: float
    brands: tuple[str, ...]
    male_tilt: float = 1.0
    elasticity: float = 1.0


CATEGORIES: tuple[Category, ...] = (
    Category("手机", 2600.0, 0.55, ("华为", "小米", "苹果", "OPPO", "vivo"), 1.4, elasticity=1.5),
    Category("电脑", 5200.0, 0.45, ("联想", "华为", "苹果", "戴尔", "惠普"), 1.4, elasticity=1.0),
    Category("家电", 1400.0, 0.75, ("美的", "格力", "海尔", "小米", "苏泊尔"), elasticity=2.0),
    Category("服饰", 190.0, 0.60, ("优衣库", "李宁", "波司登", "ZARA", "太平鸟"), 1 / 1.3, elasticity=3.0),
    Category("美妆", 230.0, 0.60, ("欧莱雅", "雅诗兰黛", "兰蔻", "完美日记", "百雀羚"), 1 / 2.0, elasticity=2.5),
    Category("食品", 48.0, 0.60, ("三只松鼠", "良品铺子", "伊利", "蒙牛", "农夫山泉"), elasticity=0.5),
    Category("母婴", 170.0, 0.70, ("飞鹤", "帮宝适", "好孩子", "贝亲", "花王"), 1 / 1.6, elasticity=0.7),
    Category("运动", 280.0, 0.70, ("安踏", "耐克", "阿迪达斯", "李宁", "迪卡侬"), 1.3, elasticity=2.2),
    Category("图书", 42.0, 0.40, ("人民文学", "中信出版", "机械工业", "商务印书馆", "新星出版"), elasticity=1.2),
    Category("家居", 120.0, 0.80, ("宜家", "网易严选", "南极人", "罗莱", "水星家纺"), elasticity=1.8),
)
_CAT_INDEX = {c.name: i for i, c in enumerate(CATEGORIES)}
#: Items per category in the catalogue (unit prices log-normal around the category median).
_ITEMS_PER_CATEGORY = 60
#: A category with fewer than this many items in a user's price band is down-weighted in proportion.
_BAND_FULL_ITEMS = 5
#: Dirichlet base concentration of every category before the archetype and gender tilts.
_PREF_ALPHA = 0.6

#: City -> (population weight, resident-ID area codes).
CITIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "北京": (0.13, ("110101", "110105", "110108")),
    "上海": (0.13, ("310101", "310104", "310115")),
    "广州": (0.10, ("440103", "440106")),
    "深圳": (0.10, ("440303", "440305")),
    "杭州": (0.08, ("330102", "330106")),
    "成都": (0.08, ("510104", "510107")),
    "重庆": (0.07, ("500103", "500106")),
    "武汉": (0.07, ("420102", "420106")),
    "南京": (0.06, ("320102", "320106")),
    "西安": (0.06, ("610102", "610113")),
    "苏州": (0.06, ("320505", "320508")),
    "天津": (0.06, ("120101", "120104")),
}

#: Mainland mobile number prefixes (the first three of eleven digits).
_PHONE_PREFIXES = tuple(
    [str(p) for p in range(130, 140)] + ["150", "151", "152", "153", "155", "156", "157", "158", "159"]
    + ["166", "170", "173", "175", "176", "177", "178"] + [str(p) for p in range(180, 190)]
    + ["191", "198", "199"]
)

#: Device types with their share as a user's primary device.
DEVICES: tuple[tuple[str, float], ...] = (
    ("android", 0.52), ("ios", 0.33), ("pc", 0.08), ("mini_program", 0.07),
)
#: Share of a user's events and impressions on the primary device (the rest: any device).
_PRIMARY_DEVICE_SHARE = 0.85

#: Channel -> (share of impressions before the consent rule, ad positions, cost model, cost median CNY).
#: sms / push / email reach only users who opted in; other draws fall back to the display channels.
#: Cost models: ``cpm`` = per impression, ``cpc`` = charged only when clicked, ``fixed`` = per message.
CHANNELS: dict[str, tuple[float, int, str, float]] = {
    "feed": (0.36, 6, "cpm", 0.030),
    "search": (0.20, 4, "cpc", 1.20),
    "short_video": (0.26, 3, "cpm", 0.040),
    "sms": (0.08, 1, "fixed", 0.045),
    "push": (0.07, 1, "fixed", 0.0),
    "email": (0.03, 1, "fixed", 0.002),
}
_MESSAGE_CHANNELS = {"sms": "opt_in_sms", "push": "opt_in_push", "email": "opt_in_email"}
#: Campaigns per channel, ads per campaign (each campaign promotes one category).
_CAMPAIGNS_PER_CHANNEL = 6
_ADS_PER_CAMPAIGN = 4
#: Log-normal sigma of display (cpm/cpc) costs around their median.
_COST_SIGMA = 0.35


@dataclass(frozen=True)
class Archetype:
    """One planted customer archetype.

    Attributes:
        name: Archetype name written to the truth.
        share: Share of users.
        description: One line for the docs and the manifest.
        buys: Whether the archetype orders at all (every buyer has >= 1 paid order).
        base_orders: Orders every user of the archetype places (the first is never refunded).
        extra_orders_per_30d: Poisson rate of orders beyond ``base_orders``, per 30 days of
            the user's active period.
        regular: Whether orders are spread evenly over the active period (one in each of N
            equal slices, a steady rhythm) rather than at random times.
        order_fade: Irregular buyers' order times, as a fraction of their active period, are
            Beta(1, order_fade): 1 is uniform, larger values make purchases fade out over time.
        price_band: (lowest, highest) unit price in CNY of the items the archetype buys and
            browses; categories without items in the band are not bought.
        extra_quantity: Order quantity is ``1 + Poisson(extra_quantity)``.
        category_tilt: (category, multiplier) pairs applied to the Dirichlet weights.
        churn_share: Share of the archetype's users that churn inside the window.
        churn_window: Churn day is uniform in this range, as fractions of the window.
        sessions_per_30d: Browsing sessions (without purchase) per 30 active days.
        impressions_per_30d: Ad impressions per 30 active days.
        click_affinity: Additive term in the click model's logit.
    """

    name: str
    share: float
    description: str
    buys: bool
    base_orders: int
    extra_orders_per_30d: float
    regular: bool
    order_fade: float
    price_band: tuple[float, float]
    extra_quantity: float
    category_tilt: tuple[tuple[str, float], ...]
    churn_share: float
    churn_window: tuple[float, float]
    sessions_per_30d: float
    impressions_per_30d: float
    click_affinity: float


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype(
        name="champions", share=0.09, description="frequent, big baskets, recent",
        buys=True, base_orders=1, extra_orders_per_30d=2.6, regular=True, order_fade=1.0,
        price_band=(150.0, 6000.0), extra_quantity=1.2,
        category_tilt=(("手机", 1.5), ("电脑", 1.5), ("家电", 1.5), ("服饰", 1.5), ("美妆", 1.5)),
        churn_share=0.05, churn_window=(0.88, 0.97),
        sessions_per_30d=0.6, impressions_per_30d=2.9, click_affinity=0.7,
    ),
    Archetype(
        name="loyal", share=0.22, description="regular mid-value buyers",
        buys=True, base_orders=3, extra_orders_per_30d=0.6, regular=True, order_fade=1.0,
        price_band=(100.0, 500.0), extra_quantity=0.3,
        category_tilt=(("服饰", 1.5), ("美妆", 1.5), ("食品", 1.5), ("母婴", 1.5)),
        churn_share=0.08, churn_window=(0.85, 0.97),
        sessions_per_30d=0.4, impressions_per_30d=2.4, click_affinity=0.4,
    ),
    Archetype(
        name="big_ticket", share=0.14, description="occasional, high-value items",
        buys=True, base_orders=1, extra_orders_per_30d=0.05, regular=False, order_fade=1.5,
        price_band=(2500.0, 9000.0), extra_quantity=0.0,
        category_tilt=(("手机", 3.0), ("电脑", 3.0), ("家电", 3.0)),
        churn_share=0.40, churn_window=(0.30, 0.90),
        sessions_per_30d=0.25, impressions_per_30d=2.0, click_affinity=0.1,
    ),
    Archetype(
        name="bargain", share=0.20, description="occasional, low-value items",
        buys=True, base_orders=1, extra_orders_per_30d=0.04, regular=False, order_fade=1.5,
        price_band=(15.0, 50.0), extra_quantity=0.4,
        category_tilt=(("食品", 3.0), ("图书", 3.0), ("家居", 2.0)),
        churn_share=0.40, churn_window=(0.30, 0.90),
        sessions_per_30d=0.25, impressions_per_30d=2.0, click_affinity=0.2,
    ),
    Archetype(
        name="lapsed", share=0.25, description="bought early in the window, then churned",
        buys=True, base_orders=2, extra_orders_per_30d=1.2, regular=False, order_fade=1.0,
        price_band=(60.0, 250.0), extra_quantity=0.3,
        category_tilt=(),
        churn_share=1.0, churn_window=(0.12, 0.35),
        sessions_per_30d=0.4, impressions_per_30d=2.0, click_affinity=-0.6,
    ),
    Archetype(
        name="none", share=0.10, description="registered, never purchased in the window",
        buys=False, base_orders=0, extra_orders_per_30d=0.0, regular=False, order_fade=1.0,
        price_band=(10.0, 12000.0), extra_quantity=0.0,
        category_tilt=(),
        churn_share=0.30, churn_window=(0.10, 0.90),
        sessions_per_30d=0.2, impressions_per_30d=1.7, click_affinity=-0.4,
    ),
)

#: Share of orders refunded (a user's first order never is), and share written with an empty status.
_REFUND_SHARE = 0.03
_EMPTY_STATUS_SHARE = 0.01
#: Orders placed per chunk when drawing (category, day): bounds memory at (chunk x days) floats.
_ORDER_CHUNK = 20_000

#: Event funnel. Per order: views ``1 + Poisson(order_extra_views)`` before it (first one of
#: the ordered item), then a click, a cart and the purchase event with these probabilities
#: (not every order is tracked in the app: mini-program and server-side orders leave no event).
#: Per browsing session: ``1 + Poisson(session_extra_views)`` views of one category; each view
#: is clicked with ``view_click``; each click is favourited / carted with ``click_favorite`` /
#: ``click_cart``; each cart is removed again with ``cart_remove``.
FUNNEL: dict[str, float] = {
    "order_extra_views": 0.3,
    "order_click": 0.95,
    "order_cart": 0.92,
    "order_purchase": 0.90,
    "session_extra_views": 1.5,
    "view_click": 0.30,
    "click_favorite": 0.15,
    "click_cart": 0.30,
    "cart_remove": 0.40,
}

#: The true click model: logit(p) = intercept + channel + position * (ad_position - 1)
#: + device + archetype affinity + category_match * [campaign category == user's top category].
CLICK_MODEL: dict[str, Any] = {
    "intercept": -3.3,
    "channel": {"feed": 0.0, "search": 0.7, "short_video": -0.2, "sms": -1.0, "push": -0.4, "email": -1.6},
    "position": -0.18,
    "device": {"android": 0.0, "ios": 0.15, "pc": -0.35, "mini_program": 0.1},
    "archetype": {a.name: a.click_affinity for a in ARCHETYPES},
    "category_match": 0.6,
}

# ---------------------------------------------------------------------------------------------
# Style "varied": the same world written in other shapes the contract allows
# ---------------------------------------------------------------------------------------------

#: Output styles of :func:`generate`.
STYLES = ("default", "varied")

#: Style "varied": share of rows written in each timestamp format, in every timestamp column.
#: ISO rows carry one of ``_VARIED_ISO_OFFSETS`` (the same instant as another zone's wall time)
#: and 0-6 fractional digits; local rows are Asia/Shanghai wall time (``ingest.source_timezone``).
VARIED_TIMESTAMP_FORMATS: tuple[tuple[str, float], ...] = (
    ("local", 0.40),  # 2026-03-01 10:00:00
    ("iso_offset", 0.35),  # 2026-03-01T02:00:00.25Z, 2026-02-28T21:00:00-05:00, ...
    ("epoch_ms", 0.25),  # 1772330400123
)
_VARIED_ISO_OFFSETS: tuple[tuple[str, int], ...] = (
    ("Z", 0), ("+00:00", 0), ("+08:00", 8 * 3600), ("-05:00", -5 * 3600), ("+05:30", 5 * 3600 + 1800),
    ("+09:00", 9 * 3600),
)

#: Style "varied": placement name of each planted ad position (the click model's position term
#: is unchanged, so a model can learn that placement matters). ``_NUMERIC_POSITION_SHARE`` of the
#: rows keep the number as text ("1".."6"); the manifest maps every spelling to its position.
AD_POSITION_NAMES: dict[int, str] = {
    1: "top_banner", 2: "feed_slot_2", 3: "信息流-3", 4: "sidebar", 5: "feed_slot_5", 6: "bottom_banner",
}
_NUMERIC_POSITION_SHARE = 0.25

#: Style "varied": channel and device names as written (one spelling each, so their click-model
#: terms stay learnable).
VARIED_CHANNELS: dict[str, str] = {
    "feed": "wechat_moments", "search": "baidu_search", "short_video": "douyin_feed",
    "sms": "sms_notify", "push": "app_push", "email": "email",
}
VARIED_DEVICES: dict[str, str] = {
    "android": "Android", "ios": "iPhone", "pc": "pc-web", "mini_program": "WeChat-MiniProgram",
}
#: Campaign ids are ``<year>Q<quarter>-<theme>-<channel tag>``, e.g. ``2026Q2-spring-sale-douyin``.
_CAMPAIGN_THEMES = (
    "spring-sale", "618-mid-year", "summer-clearance", "new-arrivals", "member-day", "brand-week",
    "back-to-school", "flash-deal", "double-11-warmup", "weekend-special", "new-user-gift", "year-end",
)
_CAMPAIGN_CHANNEL_TAGS = {
    "feed": "moments", "search": "sem", "short_video": "douyin", "sms": "sms", "push": "push", "email": "edm",
}

#: Style "varied": share of users (with a city) whose city is one of ``_VARIED_CITIES``: cities
#: outside :data:`CITIES`, other spellings of them, and cities outside mainland China.
_VARIED_CITY_SHARE = 0.25
_VARIED_CITIES = (
    "佛山", "东莞", "合肥", "青岛", "厦门", "长沙", "昆明", "乌鲁木齐", "北京市", "上海市", "Shenzhen",
    "Hong Kong", "Singapore", "Kuala Lumpur", "Tokyo", "New York", "London", "São Paulo", "Zürich",
)
#: Style "varied": share of catalogue items whose brand is one of their category's extra brands
#: (an item keeps one brand everywhere). Two contain CSV specials: a comma and a double quote.
_VARIED_BRAND_SHARE = 0.25
_VARIED_BRANDS: dict[str, tuple[str, ...]] = {
    "手机": ("Samsung", "荣耀", "realme", "Nothing"),
    "电脑": ("ASUS", "Microsoft Surface", "ThinkPad"),
    "家电": ("Dyson", "Philips", "西门子"),
    "服饰": ("H&M", "Levi's", "Bershka"),
    "美妆": ("Kiehl's", "SK-II", "Shiseido 資生堂"),
    "食品": ("Nestlé", "Ferrero", "Lay's"),
    "母婴": ("Pampers", "a2", "Aptamil"),
    "运动": ("Under Armour", "Lululemon", "ASICS"),
    "图书": ("Penguin Random House", "O'Reilly Media", 'Penguin "Classics"'),
    "家居": ("Procter & Gamble, Inc.", "MUJI 无印良品", "Zara Home"),
}
#: Style "varied": registered-only users (in users.csv and nowhere else) per simulated user. The
#: world has 10 % ``none`` users, so about 30 % of all users have no order:
#: (0.10 + 2/7) / (1 + 2/7) = 0.30.
_REGISTERED_ONLY_PER_USER = 2 / 7
#: Archetype of the registered-only users in ``_truth/users.csv``.
REGISTERED_ONLY_ARCHETYPE = "dormant"
#: Style "varied": share of amounts and costs written without trailing zeros (``99.5``, ``48``).
_SHORT_NUMBER_SHARE = 0.5
#: Longest run of digits in a random part of a varied id: the ingest job masks 11-digit runs
#: starting with 1 (phone-like) and 15-18 character runs (ID-like) in quarantined records.
_MAX_DIGIT_RUN = 6
#: Multiplier of the bijection that turns a row's rank into an id code (a prime, so it is
#: invertible modulo any power of 10, 16, 36 or 64).
_ID_MULT = 2_654_435_761

#: Defects planted per dataset: kind -> (share of clean rows, minimum count). ``conflict`` counts
#: pairs (two quarantined rows each); ``duplicate`` counts extra exact copies of clean lines;
#: ``unknown_user`` counts valid orders by users absent from users.csv (one order each);
#: ``field:<name>`` counts optional fields made malformed in kept rows.
DEFECT_PLAN: dict[str, dict[str, tuple[float, int]]] = {
    "users": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.0, 1),
        "bad_timestamp": (0.001, 1),
        "conflict": (0.0, 1),
        "duplicate": (0.0, 2),
        "field:phone": (0.002, 1),
        "field:id_number": (0.002, 1),
        "field:gender": (0.001, 1),
        "field:birth_date": (0.001, 1),
        "field:opt_in_sms": (0.0005, 1),
        "field:opt_in_push": (0.0005, 1),
        "field:opt_in_email": (0.0005, 1),
    },
    "orders": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "bad_number": (0.001, 1),
        "negative_amount": (0.001, 1),
        "bad_quantity": (0.001, 1),
        "bad_status": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.002, 2),
        "unknown_user": (0.0002, 3),
    },
    "events": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "unknown_action": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.003, 2),
    },
    "impressions": {
        "malformed_record": (0.001, 1),
        "missing_required": (0.001, 1),
        "bad_timestamp": (0.001, 1),
        "bad_number": (0.001, 1),
        "negative_cost": (0.001, 1),
        "bad_flag": (0.001, 1),
        "conflict": (0.0005, 1),
        "duplicate": (0.002, 2),
    },
}

# Values used for defects: each is invalid under every reasonable parser, never "almost valid".
_BAD_TIMESTAMPS = ("unknown", "yesterday 21:30", "2026-13-45 25:61:00", "--", "31/02/2026 10:00")
_BAD_NUMBERS = ("12.5元", "abc", "1.2.3", "¥99.00", "九十九")
_BAD_QUANTITIES = ("0", "-1", "1.5", "2.5")
_BAD_STATUSES = ("shipped", "pending", "cancelled", "unpaid")
_BAD_ACTIONS = ("share", "search", "like", "checkout")
_BAD_FLAGS = ("2", "yes", "-1", "Y")
_BAD_GENDERS = ("X", "U", "unknown", "2")
_BAD_BIRTH_DATES = ("unknown", "19xx-05-12", "1990-13-45")
_BAD_CONSENTS = ("2", "yes", "-1", "10")

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = "10X98765432"

# New steps go last: spawned streams are positional, so the earlier steps keep their draws.
_STEPS = ("users", "orders", "events", "impressions", "defects", "writing", "truth", "promotions", "varied")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote.

    Attributes:
        out_dir: The input folder.
        files: Dataset name -> path of the file written.
        rows: Dataset name -> data rows written (header excluded; defects and duplicates included).
        defects: Dataset name -> planted defect kind -> rows involved (a conflicting pair is 2 rows).
        expected: Dataset name -> the reconciliation the ingest job must report
            (``rows_read``, ``accepted``, ``quarantined``, ``duplicates_dropped``,
            ``field_issues`` and, for orders, ``unknown_users``).
        manifest_path: ``_truth/manifest.json``.
        seconds: Wall time of the generation.
    """

    out_dir: Path
    files: dict[str, Path]
    rows: dict[str, int]
    defects: dict[str, dict[str, int]]
    expected: dict[str, dict]
    manifest_path: Path
    seconds: float


# ---------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------


def id_check_digit(first17: str) -> str:
    """The GB 11643 check character of an 18-character resident ID.

    Args:
        first17: The first 17 digits.

    Returns:
        ``0``-``9`` or ``X``.
    """
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS))
    return _ID_CHECK[total % 11]


def _day_number(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _format_timestamps(local_s: np.ndarray, fmt: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Format local wall-clock seconds in the format chosen per row (0 local, 1 ISO, 2 epoch ms)."""
    iso = np.datetime_as_string(local_s.astype("datetime64[s]"), unit="s")
    out = np.char.replace(iso, "T", " ").astype(object)
    is_iso = fmt == 1
    out[is_iso] = np.char.add(iso[is_iso], "+08:00").astype(object)
    is_epoch = fmt == 2
    epoch_ms = (local_s[is_epoch] - _TZ_OFFSET_S) * 1000 + ms[is_epoch]
    out[is_epoch] = epoch_ms.astype(str).astype(object)
    return out


def _timestamps(rng: np.random.Generator, local_s: np.ndarray) -> np.ndarray:
    shares = np.array([s for _, s in TIMESTAMP_FORMATS])
    fmt = rng.choice(len(shares), size=len(local_s), p=shares / shares.sum())
    ms = rng.integers(0, 1000, size=len(local_s))
    return _format_timestamps(local_s.astype(np.int64), fmt, ms)


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    hour = rng.choice(24, size=n, p=_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())
    return hour * 3600 + rng.integers(0, 3600, size=n)


def _choose_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one column index per row from per-row cumulative probabilities ``cum[rows]``."""
    u = rng.random(len(rows))[:, None]
    return np.minimum((cum[rows] < u).sum(axis=1), cum.shape[1] - 1)


def _ids(prefix: str, start: int, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(start, start + n)], dtype=object)


def _csv_lines(df: pd.DataFrame) -> list[str]:
    if df.empty:
        return []
    text = df.to_csv(header=False, index=False, lineterminator="\n")
    return text[:-1].split("\n")


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _event_lines(df: pd.DataFrame) -> list[str]:
    cols = [df[c].to_numpy() for c in dataset("events").columns]
    return [
        f'{{"event_id":"{a}","user_id":"{b}","ts":"{c}","action":"{d}","item_id":"{e}",'
        f'"category":"{f}","brand":"{g}","device_type":"{h}"}}'
        for a, b, c, d, e, f, g, h in zip(*cols)
    ]


# ---------------------------------------------------------------------------------------------
# The population
# ---------------------------------------------------------------------------------------------


@dataclass
class _World:
    """Everything generated so far (clean rows and per-user truth)."""

    n_users: int
    days: int
    start_day: int  # day number (days since 1970-01-01) of the window's first local day
    users: pd.DataFrame  # clean users.csv columns, as strings
    truth: pd.DataFrame  # per-user truth
    pref_cum: np.ndarray  # (users, categories) cumulative preferences over buyable categories
    catalog: pd.DataFrame  # item_id, cat (category index), brand, price
    band_items: np.ndarray  # (archetypes, categories, items) catalogue rows in the price band, padded
    band_counts: np.ndarray  # (archetypes, categories) number of such rows
    orders: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    impressions: pd.DataFrame | None = None
    p_click: np.ndarray | None = None
    price_ratio: np.ndarray | None = None  # (categories, days) promotion calendar

    @property
    def start_s(self) -> int:
        return self.start_day * _DAY

    @property
    def end_s(self) -> int:
        return (self.start_day + self.days) * _DAY


def _catalog(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for ci, cat in enumerate(CATEGORIES):
        prices = np.sort(cat.median_price * np.exp(rng.normal(0.0, cat.price_sigma, _ITEMS_PER_CATEGORY)))
        prices = np.maximum(np.round(prices) - 0.1, 0.9)  # shop-style prices such as 2599.9
        brands = rng.choice(len(cat.brands), size=_ITEMS_PER_CATEGORY)
        for j in range(_ITEMS_PER_CATEGORY):
            rows.append((ci, cat.brands[brands[j]], float(prices[j])))
    df = pd.DataFrame(rows, columns=["cat", "brand", "price"])
    df.insert(0, "item_id", _ids("sku", 1, len(df), 5))
    return df


def _price_bands(catalog: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue rows per (archetype, category) whose unit price is in the archetype's band."""
    cats, prices = catalog["cat"].to_numpy(), catalog["price"].to_numpy()
    counts = np.zeros((len(ARCHETYPES), len(CATEGORIES)), dtype=int)
    items = np.zeros((len(ARCHETYPES), len(CATEGORIES), _ITEMS_PER_CATEGORY), dtype=int)
    for ai, a in enumerate(ARCHETYPES):
        lo, hi = a.price_band
        for ci in range(len(CATEGORIES)):
            rows = np.flatnonzero((cats == ci) & (prices >= lo) & (prices <= hi))
            counts[ai, ci] = len(rows)
            items[ai, ci, : len(rows)] = rows
    return items, counts


def _build_users(rng: np.random.Generator, n: int, days: int, end_date: date) -> _World:
    start_day = _day_number(end_date) - days + 1
    catalog = _catalog(rng)
    band_items, band_counts = _price_bands(catalog)
    shares = np.array([a.share for a in ARCHETYPES])
    arch = rng.choice(len(ARCHETYPES), size=n, p=shares / shares.sum())

    gender = rng.choice(np.array(["M", "F", ""], dtype=object), size=n, p=[0.45, 0.47, 0.08])

    # Category preferences: Dirichlet with archetype and gender tilts.
    alpha = np.full((n, len(CATEGORIES)), _PREF_ALPHA)
    for ai, a in enumerate(ARCHETYPES):
        for cname, mult in a.category_tilt:
            alpha[arch == ai, _CAT_INDEX[cname]] *= mult
    male_tilt = np.array([c.male_tilt for c in CATEGORIES])
    alpha[gender == "M"] *= male_tilt
    alpha[gender == "F"] /= male_tilt
    prefs = rng.gamma(alpha)
    # What the user can buy: categories with items in the archetype's price band.
    prefs *= np.minimum(band_counts[arch] / _BAND_FULL_ITEMS, 1.0)
    prefs /= prefs.sum(axis=1, keepdims=True)
    top_cat = prefs.argmax(axis=1)

    # Churn day (day offset inside the window; the user does nothing from that day on).
    churn_day = np.full(n, -1)
    for ai, a in enumerate(ARCHETYPES):
        idx = np.flatnonzero(arch == ai)
        churns = rng.random(len(idx)) < a.churn_share
        lo, hi = a.churn_window
        day = np.floor(rng.uniform(lo, hi, len(idx)) * days).astype(int)
        churn_day[idx[churns]] = np.clip(day[churns], 1, days - 1)
    active_days = np.where(churn_day >= 0, churn_day, days)

    # Birth date (age 18-75), city, phone, resident ID, consents, signup.
    age_days = np.round((18 + np.minimum(rng.gamma(3.0, 5.0, n), 57)) * 365.25).astype(int)
    birth_day = _day_number(end_date) - age_days - rng.integers(0, 365, n)
    has_birth = rng.random(n) >= 0.10
    birth = np.datetime_as_string(birth_day.astype("datetime64[D]"), unit="D").astype(object)
    birth_str = np.where(has_birth, birth, "")

    city_names = list(CITIES)
    city_w = np.array([CITIES[c][0] for c in city_names])
    city_idx = rng.choice(len(city_names), size=n, p=city_w / city_w.sum())
    city = np.array(city_names, dtype=object)[city_idx]
    city = np.where(rng.random(n) < 0.02, "", city)

    prefixes = np.array(_PHONE_PREFIXES, dtype=object)[rng.integers(0, len(_PHONE_PREFIXES), n)]
    tails = rng.integers(0, 100_000_000, n)
    phone = np.array([f"{p}{t:08d}" for p, t in zip(prefixes, tails)], dtype=object)
    phone = np.where(rng.random(n) < 0.15, "", phone)

    has_id = has_birth & (rng.random(n) < 0.65)
    area = np.array([CITIES[city_names[c]][1][k % len(CITIES[city_names[c]][1])]
                     for c, k in zip(city_idx, rng.integers(0, 3, n))], dtype=object)
    seq = rng.integers(0, 100, n) * 10
    parity = np.where(gender == "M", 1, np.where(gender == "F", 0, rng.integers(0, 2, n)))
    seq = seq + 2 * rng.integers(0, 5, n) + parity
    ids = []
    for i in range(n):
        if not has_id[i]:
            ids.append("")
            continue
        body = f"{area[i]}{birth[i].replace('-', '')}{seq[i]:03d}"
        ids.append(body + id_check_digit(body))
    id_number = np.array(ids, dtype=object)

    opt = {
        "opt_in_sms": rng.random(n) < 0.60,
        "opt_in_push": rng.random(n) < 0.45,
        "opt_in_email": rng.random(n) < 0.25,
    }
    signup_s = (start_day * _DAY - np.round(rng.gamma(1.5, 250.0, n) * _DAY).astype(np.int64)
                - _DAY + _time_of_day(rng, n))

    users = pd.DataFrame({
        "user_id": _ids("u", 1, n, 6),
        "gender": gender,
        "birth_date": birth_str,
        "city": city,
        "phone": phone,
        "id_number": id_number,
        "signup_time": _timestamps(rng, signup_s),
        **{k: np.where(v, "1", "0").astype(object) for k, v in opt.items()},
    })
    dev_names = np.array([d for d, _ in DEVICES], dtype=object)
    dev_w = np.array([w for _, w in DEVICES])
    truth = pd.DataFrame({
        "user_id": users["user_id"],
        "archetype": np.array([a.name for a in ARCHETYPES], dtype=object)[arch],
        "arch": arch,
        "churn_day": churn_day,
        "active_days": active_days,
        "top_cat": top_cat,
        "device": rng.choice(len(dev_names), size=n, p=dev_w / dev_w.sum()),
        **opt,
        "signup_s": signup_s,  # kept for style "varied", which writes the times again
    })
    return _World(n, days, start_day, users, truth, np.cumsum(prefs, axis=1), catalog, band_items, band_counts)


def _devices(rng: np.random.Generator, primary: np.ndarray) -> np.ndarray:
    dev_names = np.array([d for d, _ in DEVICES], dtype=object)
    dev_w = np.array([w for _, w in DEVICES])
    other = rng.choice(len(dev_names), size=len(primary), p=dev_w / dev_w.sum())
    keep = rng.random(len(primary)) < _PRIMARY_DEVICE_SHARE
    return dev_names[np.where(keep, primary, other)]


def _pick_items(rng: np.random.Generator, w: _World, user: np.ndarray, cat: np.ndarray | None = None) -> np.ndarray:
    """Catalogue row per draw: category by the user's preferences, item uniform in the price band."""
    if cat is None:
        cat = _choose_rows(rng, w.pref_cum, user)
    arch = w.truth["arch"].to_numpy()[user]
    count = w.band_counts[arch, cat]
    pick = np.floor(rng.random(len(user)) * np.maximum(count, 1)).astype(int)
    # A category outside the band (never drawn from the preferences) falls back to any of its items.
    return np.where(count > 0, w.band_items[arch, cat, pick], cat * _ITEMS_PER_CATEGORY + pick)


def _promotions(rng: np.random.Generator, days: int) -> np.ndarray:
    """Price ratio per (category, day): 1.0, or on promotion days one of ``PROMOTIONS["ratios"]``."""
    ratios = np.array(PROMOTIONS["ratios"], dtype=float)
    on = rng.random((len(CATEGORIES), days)) < PROMOTIONS["share"]
    level = rng.integers(0, len(ratios), (len(CATEGORIES), days))
    return np.where(on, ratios[level], 1.0)


def _weekday(day_number: np.ndarray) -> np.ndarray:
    """0 = Monday (1970-01-01, day number 0, was a Thursday)."""
    return (day_number + 3) % 7


def _place_orders(w: _World, user: np.ndarray, nth: np.ndarray, count: np.ndarray,
                  u_day: np.ndarray, u_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day offset and category of each order.

    Without prices and weekdays an order's day follows its archetype's timing (regular: uniform in
    the j-th of N equal slices of the active period; otherwise Beta(1, fade) over it) and its
    category the user's preferences. Here the probability of each (day, category) is that, times
    the weekday weight, times ``price_ratio[category, day] ** -elasticity``: the user still places
    the same orders inside the same active period, but on busy weekdays and cheap days. Because an
    order chooses among many days, one day's promotion lowers the normaliser only a little, so the
    expected orders of a (category, day) move almost exactly in proportion to ``ratio ** -e``.
    """
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy().astype(float)
    prefs = np.diff(w.pref_cum, axis=1, prepend=0.0)
    elasticity = np.array([c.elasticity for c in CATEGORIES])
    lift = w.price_ratio ** -elasticity[:, None]  # (categories, days)
    week = WEEKDAY_WEIGHTS[_weekday(w.start_day + np.arange(w.days))]
    t = np.arange(w.days, dtype=float)[None, :]
    regular = np.array([a.regular for a in ARCHETYPES])
    fade = np.array([a.order_fade for a in ARCHETYPES])
    day = np.empty(len(user), dtype=np.int64)
    cat = np.empty(len(user), dtype=np.int64)
    for lo in range(0, len(user), _ORDER_CHUNK):
        sl = slice(lo, lo + _ORDER_CHUNK)
        u, a = user[sl], active[user[sl]][:, None]
        # Probability mass of each day under the archetype's timing (continuous slot -> day).
        start, stop = nth[sl][:, None] / count[u][:, None] * a, (nth[sl][:, None] + 1) / count[u][:, None] * a
        in_slice = np.clip(np.minimum(t + 1, stop) - np.maximum(t, start), 0.0, None)
        f = fade[arch[u]][:, None]
        x0, x1 = np.minimum(t / a, 1.0), np.minimum((t + 1) / a, 1.0)
        faded = (1.0 - x0) ** f - (1.0 - x1) ** f
        mass = np.where(regular[arch[u]][:, None], in_slice, faded)
        weight = mass * week * (prefs[u] @ lift)
        cum = np.cumsum(weight, axis=1)
        # 1 - U lies in (0, 1]: the first cell whose cumulative weight reaches it has weight > 0.
        d = (cum < ((1.0 - u_day[sl]) * cum[:, -1])[:, None]).sum(axis=1)
        day[sl] = np.minimum(d, w.days - 1)
        cw = np.cumsum(prefs[u] * lift[:, day[sl]].T, axis=1)
        c = (cw < ((1.0 - u_cat[sl]) * cw[:, -1])[:, None]).sum(axis=1)
        cat[sl] = np.minimum(c, len(CATEGORIES) - 1)
    return day, cat


def _build_orders(rng: np.random.Generator, w: _World) -> None:
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy()
    buys = np.array([a.buys for a in ARCHETYPES])[arch]
    rate = np.array([a.extra_orders_per_30d for a in ARCHETYPES])[arch] / 30.0
    base = np.array([a.base_orders for a in ARCHETYPES])[arch]
    count = np.where(buys, base + rng.poisson(rate * active), 0)
    user = np.repeat(np.arange(w.n_users), count)
    nth = np.arange(len(user)) - np.repeat(np.cumsum(count) - count, count)
    day, cat = _place_orders(w, user, nth, count, rng.random(len(user)), rng.random(len(user)))
    local_s = w.start_s + day * _DAY + _time_of_day(rng, len(user))
    order = np.lexsort((local_s, user))
    user, local_s, day, cat = user[order], local_s[order], day[order], cat[order]
    first = np.r_[True, user[1:] != user[:-1]]

    item = _pick_items(rng, w, user, cat)
    price = w.catalog["price"].to_numpy()[item]
    qty_extra = np.array([a.extra_quantity for a in ARCHETYPES])[arch[user]]
    quantity = 1 + rng.poisson(qty_extra)
    amount = np.round(price * quantity * w.price_ratio[cat, day], 2)

    n_later = max(int((~first).sum()), 1)
    refunded = ~first & (rng.random(len(user)) < _REFUND_SHARE * len(user) / n_later)
    empty = ~refunded & (rng.random(len(user)) < _EMPTY_STATUS_SHARE)
    status = np.where(refunded, "refunded", np.where(empty, "", "paid")).astype(object)

    # File order is time order; ids follow it.
    by_time = np.argsort(local_s, kind="stable")
    df = pd.DataFrame({
        "user": user, "local_s": local_s, "item": item, "quantity": quantity,
        "amount": amount, "status": status, "paid": ~refunded,
    }).iloc[by_time].reset_index(drop=True)
    df["order_id"] = _ids("o", 1, len(df), 7)
    w.orders = df


def _order_rows(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    o = w.orders
    cat = w.catalog.iloc[o["item"].to_numpy()]
    return pd.DataFrame({
        "order_id": o["order_id"].to_numpy(),
        "user_id": w.users["user_id"].to_numpy()[o["user"].to_numpy()],
        "order_time": _timestamps(rng, o["local_s"].to_numpy()),
        "item_id": cat["item_id"].to_numpy(),
        "category": np.array([c.name for c in CATEGORIES], dtype=object)[cat["cat"].to_numpy()],
        "brand": cat["brand"].to_numpy(),
        "quantity": o["quantity"].astype(str).to_numpy(),
        "amount": np.char.mod("%.2f", o["amount"].to_numpy()).astype(object),
        "status": o["status"].to_numpy(),
    })


def _build_events(rng: np.random.Generator, w: _World) -> None:
    f = FUNNEL
    o = w.orders
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []  # (user, local_s, item, action)

    # Funnel leading to each order.
    ou, ot, oi = o["user"].to_numpy(), o["local_s"].to_numpy(), o["item"].to_numpy()
    n_views = 1 + rng.poisson(f["order_extra_views"], len(o))
    vrow = np.repeat(np.arange(len(o)), n_views)
    first_view = np.r_[True, vrow[1:] != vrow[:-1]]
    vcat = w.catalog["cat"].to_numpy()[oi[vrow]]
    vitem = np.where(first_view, oi[vrow], _pick_items(rng, w, ou[vrow], vcat))
    parts.append((ou[vrow], ot[vrow] - rng.integers(3600, 7200, len(vrow)), vitem, "view"))
    m = rng.random(len(o)) < f["order_click"]
    parts.append((ou[m], ot[m] - rng.integers(1800, 3600, m.sum()), oi[m], "click"))
    m = rng.random(len(o)) < f["order_cart"]
    parts.append((ou[m], ot[m] - rng.integers(60, 1800, m.sum()), oi[m], "cart"))
    m = rng.random(len(o)) < f["order_purchase"]
    parts.append((ou[m], ot[m] + rng.integers(0, 5, m.sum()), oi[m], "purchase"))

    # Browsing sessions without a purchase.
    arch = w.truth["arch"].to_numpy()
    active = w.truth["active_days"].to_numpy()
    rate = np.array([a.sessions_per_30d for a in ARCHETYPES])[arch] / 30.0
    su = np.repeat(np.arange(w.n_users), rng.poisson(rate * active))
    s_start = (w.start_s + np.floor(rng.random(len(su)) * active[su]).astype(np.int64) * _DAY
               + _time_of_day(rng, len(su)))
    s_cat = _choose_rows(rng, w.pref_cum, su)
    n_views = 1 + rng.poisson(f["session_extra_views"], len(su))
    srow = np.repeat(np.arange(len(su)), n_views)
    gaps = rng.integers(10, 120, len(srow))
    starts = np.cumsum(n_views) - n_views
    offset = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], n_views)
    vu, vt = su[srow], s_start[srow] + offset
    vi = _pick_items(rng, w, vu, s_cat[srow])
    parts.append((vu, vt, vi, "view"))
    m = rng.random(len(vu)) < f["view_click"]
    cu, ct, ci = vu[m], vt[m] + rng.integers(2, 20, m.sum()), vi[m]
    parts.append((cu, ct, ci, "click"))
    m = rng.random(len(cu)) < f["click_favorite"]
    parts.append((cu[m], ct[m] + rng.integers(5, 60, m.sum()), ci[m], "favorite"))
    m = rng.random(len(cu)) < f["click_cart"]
    ku, kt, ki = cu[m], ct[m] + rng.integers(10, 90, m.sum()), ci[m]
    parts.append((ku, kt, ki, "cart"))
    m = rng.random(len(ku)) < f["cart_remove"]
    parts.append((ku[m], kt[m] + rng.integers(60, 3600, m.sum()), ki[m], "remove_cart"))

    user = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    item = np.concatenate([p[2] for p in parts])
    action = np.concatenate([np.full(len(p[0]), p[3], dtype=object) for p in parts])
    # Nothing before the window, on or after the churn day, or after the window.
    stop = w.start_s + active[user].astype(np.int64) * _DAY
    keep = (ts >= w.start_s) & (ts < stop)
    user, ts, item, action = user[keep], ts[keep], item[keep], action[keep]
    order = np.lexsort((user, ts))
    w.events = pd.DataFrame({"user": user[order], "local_s": ts[order], "item": item[order],
                             "action": action[order]})


def _event_rows(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    e = w.events
    cat = w.catalog.iloc[e["item"].to_numpy()]
    primary = w.truth["device"].to_numpy()[e["user"].to_numpy()]
    return pd.DataFrame({
        "event_id": _ids("e", 1, len(e), 8),
        "user_id": w.users["user_id"].to_numpy()[e["user"].to_numpy()],
        "ts": _timestamps(rng, e["local_s"].to_numpy()),
        "action": e["action"].to_numpy(),
        "item_id": cat["item_id"].to_numpy(),
        "category": np.array([c.name for c in CATEGORIES], dtype=object)[cat["cat"].to_numpy()],
        "brand": cat["brand"].to_numpy(),
        "device_type": _devices(rng, primary),
    })


def _campaigns(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for ch in CHANNELS:
        for _ in range(_CAMPAIGNS_PER_CHANNEL):
            rows.append((ch, int(rng.integers(0, len(CATEGORIES)))))
    df = pd.DataFrame(rows, columns=["channel", "cat"])
    df.insert(0, "campaign_id", _ids("cmp", 1, len(df), 3))
    return df


def _build_impressions(rng: np.random.Generator, w: _World) -> pd.DataFrame:
    t = w.truth
    arch = t["arch"].to_numpy()
    active = t["active_days"].to_numpy()
    rate = np.array([a.impressions_per_30d for a in ARCHETYPES])[arch] / 30.0
    user = np.repeat(np.arange(w.n_users), rng.poisson(rate * active))
    n = len(user)

    names = list(CHANNELS)
    shares = np.array([CHANNELS[c][0] for c in names])
    channel = rng.choice(len(names), size=n, p=shares / shares.sum())
    display = [i for i, c in enumerate(names) if c not in _MESSAGE_CHANNELS]
    d_shares = shares[display] / shares[display].sum()
    for ch, flag in _MESSAGE_CHANNELS.items():
        ci = names.index(ch)
        refused = (channel == ci) & ~t[flag].to_numpy()[user]
        channel[refused] = np.array(display)[rng.choice(len(display), size=refused.sum(), p=d_shares)]
    ch_name = np.array(names, dtype=object)[channel]

    camps = _campaigns(rng)
    camp = channel * _CAMPAIGNS_PER_CHANNEL + rng.integers(0, _CAMPAIGNS_PER_CHANNEL, n)
    ad = camp * _ADS_PER_CAMPAIGN + rng.integers(0, _ADS_PER_CAMPAIGN, n)
    n_pos = np.array([CHANNELS[c][1] for c in names])[channel]
    position = 1 + np.floor(rng.random(n) * n_pos).astype(int)
    device = _devices(rng, t["device"].to_numpy()[user])

    message = np.isin(ch_name, list(_MESSAGE_CHANNELS))
    tod = np.where(message, 9 * 3600 + rng.integers(0, 12 * 3600, n), _time_of_day(rng, n))
    local_s = w.start_s + np.floor(rng.random(n) * active[user]).astype(np.int64) * _DAY + tod

    cm = CLICK_MODEL
    logit = (cm["intercept"]
             + np.array([cm["channel"][c] for c in names])[channel]
             + cm["position"] * (position - 1)
             + pd.Series(device).map(cm["device"]).to_numpy(dtype=float)
             + np.array([cm["archetype"][a.name] for a in ARCHETYPES])[arch[user]]
             + cm["category_match"] * (camps["cat"].to_numpy()[camp] == t["top_cat"].to_numpy()[user]))
    p = 1.0 / (1.0 + np.exp(-logit))
    clicked = rng.random(n) < p

    model = np.array([CHANNELS[c][2] for c in names])[channel]
    median = np.array([CHANNELS[c][3] for c in names])[channel]
    noisy = median * np.exp(rng.normal(0.0, _COST_SIGMA, n))
    cost = np.where(model == "fixed", median, np.where(model == "cpc", noisy * clicked, noisy))

    order = np.lexsort((user, local_s))
    w.impressions = pd.DataFrame({
        "user": user, "local_s": local_s, "campaign": camp, "ad": ad, "channel": ch_name,
        "position": position, "device": device, "cost": cost, "clicked": clicked,
    }).iloc[order].reset_index(drop=True)
    w.p_click = p[order]
    return camps


def _impression_rows(rng: np.random.Generator, w: _World, camps: pd.DataFrame) -> pd.DataFrame:
    m = w.impressions
    return pd.DataFrame({
        "impression_id": _ids("im", 1, len(m), 8),
        "user_id": w.users["user_id"].to_numpy()[m["user"].to_numpy()],
        "ts": _timestamps(rng, m["local_s"].to_numpy()),
        "ad_id": _ids("ad", 1, len(camps) * _ADS_PER_CAMPAIGN, 4)[m["ad"].to_numpy()],
        "campaign_id": camps["campaign_id"].to_numpy()[m["campaign"].to_numpy()],
        "channel": m["channel"].to_numpy(),
        "ad_position": m["position"].astype(str).to_numpy(),
        "device_type": m["device"].to_numpy(),
        "cost": np.char.mod("%.4f", m["cost"].to_numpy()).astype(object),
        "clicked": np.where(m["clicked"].to_numpy(), "1", "0").astype(object),
    })


# ---------------------------------------------------------------------------------------------
# Defects
# ---------------------------------------------------------------------------------------------


@dataclass
class _Insert:
    line: str
    kind: str
    record_id: str
    expected: str  # reason code, "duplicate_dropped", "unknown_user" or "field:<name>"


@dataclass
class _FilePlan:
    """Clean rows plus what to plant in them, and how the file spells them."""

    name: str
    rows: pd.DataFrame
    inserts: list[_Insert]
    in_place: list[tuple[int, str, str]]  # (clean row index, kind, expected)
    next_id: int
    id_prefix: str
    id_width: int
    #: Column order of the CSV file (the contract's order unless the style changes it).
    columns: tuple[str, ...] = ()
    #: The n-th id of the file (n >= 1); None: ``id_prefix`` + n padded to ``id_width`` digits.
    make_id: Callable[[int], str] | None = None
    #: Serialises clean rows (also the exact copies planted as duplicates); None: the default style.
    serialise: Callable[[pd.DataFrame], list[str]] | None = None

    def __post_init__(self) -> None:
        self.columns = self.columns or dataset(self.name).columns

    def id_for(self, n: int) -> str:
        return self.make_id(n) if self.make_id else f"{self.id_prefix}{n:0{self.id_width}d}"

    def fresh_id(self) -> str:
        value = self.id_for(self.next_id)
        self.next_id += 1
        return value

    def lines(self, rows: pd.DataFrame) -> list[str]:
        if self.serialise is not None:
            return self.serialise(rows)
        return _event_lines(rows) if self.name == "events" else _csv_lines(rows)


def _csv_field(value: str) -> str:
    # Quoted as pandas' to_csv quotes (RFC 4180, minimal); the default style has nothing to quote.
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _csv_join(values: Sequence[str]) -> str:
    return ",".join(_csv_field(v) for v in values)


def _serialise(name: str, record: dict[str, Any], columns: Sequence[str]) -> str:
    if name == "events":
        return _json_line(record)
    return _csv_join([str(record[c]) for c in columns])


def _count(n_rows: int, rate: float, minimum: int) -> int:
    return max(minimum, int(round(rate * n_rows)))


def _plant(rng: np.random.Generator, plan: _FilePlan, unknown_user: Callable[[int], str]) -> None:
    """Add the defects of ``DEFECT_PLAN[plan.name]`` to ``plan`` (each row has exactly one defect).

    ``unknown_user(i)`` is the user id of the i-th order by a user absent from users.csv.
    """
    ds = dataset(plan.name)
    cols = plan.columns
    n = len(plan.rows)
    spec = DEFECT_PLAN[plan.name]
    counts = {kind: _count(n, rate, minimum) for kind, (rate, minimum) in spec.items()}
    # Templates: distinct clean rows; field issues and duplicates must not touch the same row.
    need = sum(c * (2 if k == "conflict" else 1) for k, c in counts.items())
    pool = iter(rng.permutation(n)[: min(need, n)].tolist())

    def template() -> dict[str, Any]:
        return dict(plan.rows.iloc[next(pool)])

    def add(record: dict[str, Any], kind: str, expected: str, line: str | None = None) -> None:
        rid = str(record.get(ds.id_column, "") or "")
        plan.inserts.append(_Insert(line or _serialise(plan.name, record, cols), kind, rid, expected))

    required_non_id = [c for c in ds.required if c != ds.id_column]
    for kind, k in counts.items():
        for i in range(k):
            if kind.startswith("field:"):
                idx = next(pool)
                plan.in_place.append((idx, kind, kind))
                continue
            if kind == "duplicate":
                # Serialised exactly like the clean lines, so the copy is byte-identical.
                idx = next(pool)
                line = plan.lines(plan.rows.iloc[[idx]])[0]
                add(dict(plan.rows.iloc[idx]), kind, "duplicate_dropped", line)
                continue
            rec = template()
            if kind == "unknown_user":
                rec[ds.id_column] = plan.fresh_id()
                rec["user_id"] = unknown_user(i)
                if rec.get("status") == "refunded":
                    rec["status"] = "paid"
                add(rec, kind, "unknown_user")
                continue
            if plan.name != "users" or kind != "missing_required":
                rec[ds.id_column] = plan.fresh_id()
            if kind == "conflict":
                other = dict(rec)
                if plan.name == "users":
                    other["city"] = next(c for c in CITIES if c != rec["city"])
                elif plan.name == "orders":
                    other["amount"] = f"{float(rec['amount']) + 10.0:.2f}"
                elif plan.name == "events":
                    other["action"] = next(a for a in ACTIONS if a != rec["action"])
                else:
                    other["cost"] = f"{float(rec['cost']) + 0.01:.4f}"
                add(rec, kind, "conflicting_duplicate")
                add(other, kind, "conflicting_duplicate")
                continue
            if kind == "malformed_record":
                add(rec, kind, kind, _malformed(plan.name, rec, cols, i))
                continue
            if kind == "missing_required":
                if plan.name == "users":
                    rec["user_id"] = ""
                else:
                    field = required_non_id[i % len(required_non_id)]
                    if plan.name == "events":
                        style = (i // len(required_non_id)) % 3  # absent key, empty string, JSON null
                        if style == 0:
                            del rec[field]
                        else:
                            rec[field] = "" if style == 1 else None
                    else:
                        rec[field] = ""
                add(rec, kind, kind)
                continue
            value_sets = {
                "bad_timestamp": (ds.time_column, _BAD_TIMESTAMPS),
                "bad_number": ("amount" if plan.name == "orders" else "cost", _BAD_NUMBERS),
                "bad_quantity": ("quantity", _BAD_QUANTITIES),
                "bad_status": ("status", _BAD_STATUSES),
                "unknown_action": ("action", _BAD_ACTIONS),
                "bad_flag": ("clicked", _BAD_FLAGS),
            }
            if kind in value_sets:
                field, values = value_sets[kind]
                rec[field] = values[i % len(values)]
            elif kind == "negative_amount":
                rec["amount"] = f"-{max(float(rec['amount']), 0.01):.2f}"
            elif kind == "negative_cost":
                rec["cost"] = f"-{max(float(rec['cost']), 0.0001):.4f}"
            else:  # pragma: no cover - DEFECT_PLAN and this function are edited together
                raise ValueError(f"unknown defect kind {kind!r}")
            add(rec, kind, kind)


def _malformed(name: str, rec: dict[str, Any], cols: Sequence[str], i: int) -> str:
    if name == "events":
        line = _json_line(rec)
        variant = i % 3
        if variant == 0:
            return line[: len(line) // 2]  # truncated object
        if variant == 1:
            return json.dumps([rec[c] for c in cols], ensure_ascii=False)  # not an object
        return ";".join(f"{c}={rec[c]}" for c in cols)  # not JSON at all
    values = [str(rec[c]) for c in cols]
    if i % 2 == 0 or name == "impressions":
        return _csv_join(values + ["extra"])  # one field too many
    return _csv_join(values[:-1])  # last field missing


def _field_issue(rng: np.random.Generator, field: str, row: dict[str, Any], i: int) -> str:
    if field == "phone":
        digits = "13" + "".join(str(d) for d in rng.integers(0, 10, 10))
        # ten digits, twelve digits, or eleven characters with a letter
        return (digits[:10], digits, digits[:6] + "a" + digits[7:11])[i % 3]
    if field == "id_number":
        body = row["id_number"] or ("110101" + "19900101" + "123")
        body = body[:17]
        return (body, body + "12", body[:5] + "A" + body[6:] + "1")[i % 3]
    if field == "gender":
        return _BAD_GENDERS[i % len(_BAD_GENDERS)]
    if field == "birth_date":
        return _BAD_BIRTH_DATES[i % len(_BAD_BIRTH_DATES)]
    return _BAD_CONSENTS[i % len(_BAD_CONSENTS)]


def _assemble(rng: np.random.Generator, plan: _FilePlan) -> tuple[list[str], list[dict[str, Any]], dict]:
    """Lines of the file, the defect register and the expected reconciliation."""
    rows = plan.rows
    seen: dict[str, int] = {}
    for idx, kind, _ in plan.in_place:
        field = kind.split(":", 1)[1]
        seen[field] = seen.get(field, 0) + 1
        rows.iat[idx, rows.columns.get_loc(field)] = _field_issue(rng, field, dict(rows.iloc[idx]), seen[field])
    clean = plan.lines(rows)

    n_clean, n_ins = len(clean), len(plan.inserts)
    keys = np.r_[np.arange(n_clean, dtype=float), rng.uniform(0, max(n_clean, 1), n_ins)]
    order = np.argsort(keys, kind="stable")
    lines = [clean[j] if j < n_clean else plan.inserts[j - n_clean].line for j in order]
    position = np.empty(len(order), dtype=int)
    position[order] = np.arange(len(order))
    header = 1 if dataset(plan.name).fmt == "csv" else 0

    register = []
    ds = dataset(plan.name)
    for idx, kind, expected in plan.in_place:
        register.append({"dataset": plan.name, "line": int(position[idx]) + 1 + header,
                         "record_id": rows.iloc[idx][ds.id_column], "kind": kind, "expected": expected})
    for j, ins in enumerate(plan.inserts):
        register.append({"dataset": plan.name, "line": int(position[n_clean + j]) + 1 + header,
                         "record_id": ins.record_id, "kind": ins.kind, "expected": ins.expected})
    register.sort(key=lambda r: r["line"])

    quarantined: dict[str, int] = {}
    field_issues: dict[str, int] = {}
    for r in register:
        e = r["expected"]
        if e.startswith("field:"):
            field_issues[e[6:]] = field_issues.get(e[6:], 0) + 1
        elif e not in ("duplicate_dropped", "unknown_user"):
            quarantined[e] = quarantined.get(e, 0) + 1
    dups = sum(1 for r in register if r["expected"] == "duplicate_dropped")
    rows_read = len(lines)
    expected: dict[str, Any] = {
        "rows_read": rows_read,
        "accepted": rows_read - dups - sum(quarantined.values()),
        "quarantined": dict(sorted(quarantined.items())),
        "duplicates_dropped": dups,
        "field_issues": dict(sorted(field_issues.items())),
    }
    if plan.name == "orders":
        expected["unknown_users"] = sum(1 for r in register if r["expected"] == "unknown_user")
    return lines, register, expected


# ---------------------------------------------------------------------------------------------
# Style "varied"
# ---------------------------------------------------------------------------------------------

_HEX = "0123456789abcdef"
_B36_LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"
_B36_UPPER = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B64_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _code(ranks: np.ndarray, alphabet: str, length: int, salt: int) -> np.ndarray:
    """``length`` characters per rank, a bijection of ranks below ``len(alphabet) ** length``.

    Distinct ranks give distinct codes: rank x -> (x * prime + salt) mod base**length, in base.
    """
    base = len(alphabet)
    v = (np.asarray(ranks, dtype=np.int64) * _ID_MULT + salt) % (base ** length)
    idx = np.empty((len(v), length), dtype=np.int64)
    for k in range(length - 1, -1, -1):
        idx[:, k] = v % base
        v = v // base
    return np.array(list(alphabet))[idx]


def _random_chars(rng: np.random.Generator, n: int, length: int, alphabet: str) -> np.ndarray:
    return np.array(list(alphabet))[rng.integers(0, len(alphabet), (n, length))]


def _chars(n: int, text: str) -> np.ndarray:
    return np.tile(np.array(list(text)), (n, 1)) if text else np.empty((n, 0), dtype="<U1")


def _strings(*parts: np.ndarray, random_from: int | None = None) -> np.ndarray:
    """Join (n, k) character arrays into n strings, breaking digit runs from column ``random_from``.

    A run longer than ``_MAX_DIGIT_RUN`` that reaches a column at or after ``random_from`` (the
    random part) has that character replaced by ``f``, so no id looks like a phone or ID number.
    Columns before it (a prefix and the unique code) are never changed; None changes nothing.
    """
    chars = np.concatenate(parts, axis=1).astype("<U1")
    n, width = chars.shape
    run = np.zeros(n, dtype=int)
    for j in range(width if random_from is not None else 0):
        run = np.where(np.char.isdigit(chars[:, j]), run + 1, 0)
        if j >= random_from:
            fix = run > _MAX_DIGIT_RUN
            chars[fix, j] = "f"
            run[fix] = 0
    return np.ascontiguousarray(chars).view(f"<U{width}")[:, 0].astype(object)


def _varied_user_ids(rng: np.random.Generator, ranks: np.ndarray) -> np.ndarray:
    """User ids in six patterns of 6 to 40 characters (letters, digits, ``-`` and ``_``).

    Each pattern has its own first character and encodes the (unique) rank bijectively, so ids
    are unique; the rest is random. ``CUST-7f3a9c01`` / ``CUST-7f3a9c01-4b2e-...`` (13 or 36),
    ``o`` + 27 (a WeChat-openid-like 28), ``K3Q9ZM`` (6), ``8123456789`` (10), ``acct_...`` (40),
    ``m_<code>_<tail>`` (12-29).
    """
    n = len(ranks)
    pattern = rng.choice(6, size=n, p=[0.30, 0.20, 0.15, 0.10, 0.10, 0.15])
    out = np.empty(n, dtype=object)
    for k in range(6):
        sel = np.flatnonzero(pattern == k)
        r, m = ranks[sel], len(sel)
        if k == 0:
            ids = _strings(_chars(m, "CUST-"), _code(r, _HEX, 8, 0x5EED))
            tail = _strings(_chars(m, "-"), _random_chars(rng, m, 4, _HEX), _chars(m, "-"),
                            _random_chars(rng, m, 4, _HEX), _chars(m, "-"), _random_chars(rng, m, 12, _HEX),
                            random_from=0)
            long = rng.random(m) < 0.5
            ids[long] = ids[long] + tail[long]
        elif k == 1:
            ids = _strings(_chars(m, "o"), _code(r, _B64_URL, 6, 77_777), _random_chars(rng, m, 21, _B64_URL),
                           random_from=7)
        elif k == 2:
            ids = _strings(_chars(m, "K"), _code(r, _B36_UPPER, 5, 4242))
        elif k == 3:
            ids = _strings(_chars(m, "8"), _code(r, "0123456789", 9, 123_456_789))
        elif k == 4:
            ids = _strings(_chars(m, "acct_"), _code(r, _B36_LOWER, 7, 99_991), _chars(m, "_"),
                           _random_chars(rng, m, 27, _B36_LOWER), random_from=12)
        else:
            full = _strings(_chars(m, "m_"), _code(r, _B36_LOWER, 6, 31_337), _chars(m, "_"),
                            _random_chars(rng, m, 20, _ALNUM), random_from=8)
            keep = 9 + rng.integers(3, 21, m)
            ids = np.array([s[:k_] for s, k_ in zip(full, keep)], dtype=object)
        out[sel] = ids
    return out


def _varied_event_ids(rng: np.random.Generator, ranks: np.ndarray) -> np.ndarray:
    """UUID-like ids (36 characters); the first 8 hex digits encode the rank."""
    m = len(ranks)
    return _strings(
        _code(ranks, _HEX, 8, 0xE7E27), _chars(m, "-"), _random_chars(rng, m, 4, _HEX), _chars(m, "-4"),
        _random_chars(rng, m, 3, _HEX), _chars(m, "-"), _random_chars(rng, m, 1, "89ab"),
        _random_chars(rng, m, 3, _HEX), _chars(m, "-"), _random_chars(rng, m, 12, _HEX), random_from=9,
    )


def _day_strings(local_s: np.ndarray) -> np.ndarray:
    """``YYYYMMDD`` of local wall-clock seconds."""
    days = np.datetime_as_string(np.asarray(local_s, dtype=np.int64).astype("datetime64[s]"), unit="D")
    return np.char.replace(days, "-", "").astype(object)


def _varied_order_ids(day: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """``SO-<local date>-<sequence>`` (the sequence is unique over the file)."""
    return np.array([f"SO-{d}-{s:06d}" for d, s in zip(day, seq)], dtype=object)


def _varied_impression_ids(day: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``imp_<local date>_<7 base-36 characters encoding the rank>``."""
    code = _strings(_code(ranks, _B36_LOWER, 7, 271_828))
    return np.array([f"imp_{d}_{c}" for d, c in zip(day, code)], dtype=object)


def _varied_timestamps(rng: np.random.Generator, local_s: np.ndarray) -> np.ndarray:
    """Times in the three accepted formats at ``VARIED_TIMESTAMP_FORMATS`` shares.

    ISO rows write the instant as the wall time of one of ``_VARIED_ISO_OFFSETS`` with 0-6
    fractional digits (a sub-second part below one second, so the UTC date never moves).
    """
    local_s = np.asarray(local_s, dtype=np.int64)
    n = len(local_s)
    shares = np.array([s for _, s in VARIED_TIMESTAMP_FORMATS])
    fmt = rng.choice(len(shares), size=n, p=shares / shares.sum())
    ms = rng.integers(0, 1000, size=n)
    offset = rng.integers(0, len(_VARIED_ISO_OFFSETS), size=n)
    digits = rng.integers(0, 7, size=n)
    micros = rng.integers(0, 1_000_000, size=n)
    out = _format_timestamps(local_s, np.where(fmt == 1, 0, fmt), ms)
    iso = np.flatnonzero(fmt == 1)
    shift = np.array([s for _, s in _VARIED_ISO_OFFSETS])[offset[iso]]
    wall = np.datetime_as_string((local_s[iso] - _TZ_OFFSET_S + shift).astype("datetime64[s]"), unit="s")
    suffix = np.array([z for z, _ in _VARIED_ISO_OFFSETS], dtype=object)[offset[iso]]
    out[iso] = [
        f"{w}{'.' + f'{u:06d}'[:d] if d else ''}{z}"
        for w, d, u, z in zip(wall, digits[iso], micros[iso], suffix)
    ]
    return out


def _short_numbers(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Drop trailing fraction zeros from ``_SHORT_NUMBER_SHARE`` of decimal strings (``48.00`` -> ``48``)."""
    values = np.asarray(values, dtype=object).copy()
    pick = rng.random(len(values)) < _SHORT_NUMBER_SHARE
    short = np.char.rstrip(np.char.rstrip(values[pick].astype(str), "0"), ".")
    values[pick] = short.astype(object)
    return values


def _varied_csv_lines(columns: Sequence[str]) -> Callable[[pd.DataFrame], list[str]]:
    """CSV serialiser: columns in ``columns`` order, quoted as pandas' ``to_csv`` quotes (RFC 4180)."""

    def lines(df: pd.DataFrame) -> list[str]:
        if len(df) < 64:  # planted copies: one row at a time
            return [_csv_join([str(v) for v in row]) for row in zip(*(df[c].to_numpy() for c in columns))]
        values = []
        for c in columns:
            col = df[c].astype(str)
            special = col.str.contains(r'[,"\r\n]', regex=True).to_numpy()
            if special.any():
                col = col.copy()
                col[special] = '"' + col[special].str.replace('"', '""', regex=False) + '"'
            values.append(col.to_numpy())
        return [",".join(row) for row in zip(*values)]

    return lines


def _varied_event_lines(keys: Sequence[str]) -> Callable[[pd.DataFrame], list[str]]:
    """Event serialiser: keys in ``keys`` order, ``", "``/``": "`` separators, non-ASCII escaped
    (``\\u624b``), and numeric item ids and epoch-ms timestamps as JSON numbers."""

    def encode(key: str, value: str) -> str:
        if (key == "item_id" and value.isdigit()) or (key == "ts" and len(value) == 13 and value.isdigit()):
            return value
        if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
            return f'"{value}"'  # what json.dumps gives, without its cost (ids, times)
        return json.dumps(value, ensure_ascii=True)

    def lines(df: pd.DataFrame) -> list[str]:
        columns = []
        for key in keys:  # each distinct value is encoded once
            codes, uniq = pd.factorize(df[key].to_numpy())
            encoded = np.array([f'"{key}": {encode(key, str(v))}' for v in uniq], dtype=object)
            columns.append(encoded[codes])
        return ["{" + ", ".join(parts) + "}" for parts in zip(*columns)]

    return lines


class _IdBlocks:
    """``make_id(n)`` for planted rows: ids computed ``size`` at a time (one vectorised call
    instead of one per row); the same calls in the same order give the same ids."""

    def __init__(self, ids: Callable[[np.ndarray], np.ndarray], size: int = 1024) -> None:
        self.ids, self.size = ids, size
        self.cache: dict[int, str] = {}

    def __call__(self, n: int) -> str:
        if n not in self.cache:
            ranks = np.arange(n, n + self.size)
            self.cache.update(zip(ranks.tolist(), (str(v) for v in self.ids(ranks))))
        return self.cache[n]


@dataclass
class _Varied:
    """The renamings and extra rows of style "varied"."""

    tables: dict[str, pd.DataFrame]
    columns: dict[str, tuple[str, ...]]
    make_id: dict[str, Callable[[int], str]]
    serialise: dict[str, Callable[[pd.DataFrame], list[str]]]
    truth_users: pd.DataFrame
    impression_ids: np.ndarray
    manifest: dict[str, Any]


def _vary(rng: np.random.Generator, w: _World, camps: pd.DataFrame, tables: dict[str, pd.DataFrame],
          end_date: date) -> _Varied:
    """Rewrite the default tables in style "varied" and add the registered-only users.

    The world (who does what, when, at what price; the click probabilities) is untouched: every
    clean row of the default style has one varied row with the same user, instant, item, amount,
    channel, position, device, cost and click, only spelt differently.
    """
    n_w = w.n_users
    n_d = int(round(n_w * _REGISTERED_ONLY_PER_USER))
    dormant = _build_users(rng, n_d, w.days, end_date)  # personal fields only; they never act
    ranks = rng.permutation(n_w + n_d)
    user_ids = _varied_user_ids(rng, ranks)
    world_ids, dormant_ids = user_ids[:n_w], user_ids[n_w:]

    # users.csv: world and registered-only users in random order, other city names for some.
    users = pd.concat([
        tables["users"].assign(user_id=world_ids,
                               signup_time=_varied_timestamps(rng, w.truth["signup_s"].to_numpy())),
        dormant.users.assign(user_id=dormant_ids,
                             signup_time=_varied_timestamps(rng, dormant.truth["signup_s"].to_numpy())),
    ], ignore_index=True)
    city = users["city"].to_numpy().copy()
    other = (city != "") & (rng.random(len(city)) < _VARIED_CITY_SHARE)
    city[other] = np.array(_VARIED_CITIES, dtype=object)[rng.integers(0, len(_VARIED_CITIES), other.sum())]
    users["city"] = city
    users = users.iloc[rng.permutation(len(users))].reset_index(drop=True)

    # Catalogue: 8-digit item ids, a quarter of the items under brands outside the built-in lists.
    cat_of = w.catalog["cat"].to_numpy()
    item_ids = (rng.choice(90_000_000, size=len(cat_of), replace=False) + 10_000_000).astype(str).astype(object)
    brands = w.catalog["brand"].to_numpy().copy()
    extra = rng.random(len(brands)) < _VARIED_BRAND_SHARE
    for i in np.flatnonzero(extra):
        choices = _VARIED_BRANDS[CATEGORIES[cat_of[i]].name]
        brands[i] = choices[int(rng.integers(0, len(choices)))]

    o = w.orders
    orders = tables["orders"].assign(
        order_id=_varied_order_ids(_day_strings(o["local_s"].to_numpy()), np.arange(1, len(o) + 1)),
        user_id=world_ids[o["user"].to_numpy()],
        order_time=_varied_timestamps(rng, o["local_s"].to_numpy()),
        item_id=item_ids[o["item"].to_numpy()],
        brand=brands[o["item"].to_numpy()],
        amount=_short_numbers(rng, tables["orders"]["amount"].to_numpy()),
    )
    e = w.events
    events = tables["events"].assign(
        event_id=_varied_event_ids(rng, np.arange(1, len(e) + 1)),
        user_id=world_ids[e["user"].to_numpy()],
        ts=_varied_timestamps(rng, e["local_s"].to_numpy()),
        item_id=item_ids[e["item"].to_numpy()],
        brand=brands[e["item"].to_numpy()],
        device_type=tables["events"]["device_type"].map(VARIED_DEVICES).to_numpy(),
    )
    m = w.impressions
    year, quarter = end_date.year, (end_date.month - 1) // 3 + 1
    camp_ids = np.array([
        f"{year}Q{quarter}-{_CAMPAIGN_THEMES[k % len(_CAMPAIGN_THEMES)]}-{_CAMPAIGN_CHANNEL_TAGS[ch]}"
        for k, ch in enumerate(camps["channel"])
    ], dtype=object)
    ad_codes = _strings(_code(np.arange(len(camps) * _ADS_PER_CAMPAIGN), _B36_LOWER, 5, 1009))
    ad_ids = np.array([f"cr-{c}" for c in ad_codes], dtype=object)
    position = m["position"].to_numpy()
    numeric = rng.random(len(m)) < _NUMERIC_POSITION_SHARE
    names = np.array([AD_POSITION_NAMES[p] for p in position], dtype=object)
    impressions = tables["impressions"].assign(
        impression_id=_varied_impression_ids(_day_strings(m["local_s"].to_numpy()), np.arange(1, len(m) + 1)),
        user_id=world_ids[m["user"].to_numpy()],
        ts=_varied_timestamps(rng, m["local_s"].to_numpy()),
        ad_id=ad_ids[m["ad"].to_numpy()],
        campaign_id=camp_ids[m["campaign"].to_numpy()],
        channel=tables["impressions"]["channel"].map(VARIED_CHANNELS).to_numpy(),
        ad_position=np.where(numeric, position.astype(str).astype(object), names),
        device_type=tables["impressions"]["device_type"].map(VARIED_DEVICES).to_numpy(),
        cost=_short_numbers(rng, tables["impressions"]["cost"].to_numpy()),
    )

    # Column order: the contract matches CSV columns by name; JSON keys are unordered anyway.
    columns = {name: tuple(np.array(dataset(name).columns, dtype=object)[rng.permutation(len(dataset(name).columns))])
               for name in ("users", "orders", "events", "impressions")}
    end = end_date.strftime("%Y%m%d")
    make_id: dict[str, Callable[[int], str]] = {  # planted rows: ranks above every clean row's
        "users": _IdBlocks(lambda r: _varied_user_ids(rng, r)),
        "orders": lambda n: f"SO-{end}-{n:06d}",
        "events": _IdBlocks(lambda r: _varied_event_ids(rng, r)),
        "impressions": _IdBlocks(lambda r: _varied_impression_ids(np.full(len(r), end, dtype=object), r)),
    }
    serialise: dict[str, Callable[[pd.DataFrame], list[str]]] = {
        name: _varied_csv_lines(columns[name]) for name in ("users", "orders", "impressions")
    }
    serialise["events"] = _varied_event_lines(columns["events"])

    # Truth: the default truth renamed, plus the registered-only users.
    truth = _truth_users(w)
    truth["user_id"] = world_ids
    truth["primary_device"] = truth["primary_device"].map(VARIED_DEVICES)
    dev_names = np.array([VARIED_DEVICES[d] for d, _ in DEVICES], dtype=object)
    truth_dormant = pd.DataFrame({
        "user_id": dormant_ids,
        "archetype": REGISTERED_ONLY_ARCHETYPE,
        "churn_day": "",
        "churn_date": "",
        "has_paid_order": 0,
        "paid_orders": 0,
        "paid_amount": "0.00",
        "last_paid_date": "",
        "recency_days": "",
        "top_category": np.array([c.name for c in CATEGORIES], dtype=object)[dormant.truth["top_cat"].to_numpy()],
        "primary_device": dev_names[dormant.truth["device"].to_numpy()],
    })
    truth = pd.concat([truth, truth_dormant], ignore_index=True)

    spellings = {name: pos for pos, name in AD_POSITION_NAMES.items()}
    spellings.update({str(pos): pos for pos in AD_POSITION_NAMES})
    manifest = {
        "timestamp_formats": dict(VARIED_TIMESTAMP_FORMATS),
        "iso_offsets": [z for z, _ in _VARIED_ISO_OFFSETS],
        "iso_fraction_digits": [0, 6],
        "ad_positions": spellings,
        "numeric_position_share": _NUMERIC_POSITION_SHARE,
        "channels": dict(VARIED_CHANNELS),
        "devices": dict(VARIED_DEVICES),
        "campaigns": {cid: {"channel": VARIED_CHANNELS[ch], "category": CATEGORIES[c].name}
                      for cid, ch, c in zip(camp_ids, camps["channel"], camps["cat"])},
        "cities": {"share": _VARIED_CITY_SHARE, "names": list(_VARIED_CITIES)},
        "brands": {"share": _VARIED_BRAND_SHARE, "names": {k: list(v) for k, v in _VARIED_BRANDS.items()}},
        "registered_only": {"archetype": REGISTERED_ONLY_ARCHETYPE, "users": n_d,
                            "per_simulated_user": round(_REGISTERED_ONLY_PER_USER, 6)},
        "users_without_orders": int(n_w + n_d - o["user"].nunique()),
        "short_number_share": _SHORT_NUMBER_SHARE,
        "columns": {k: list(v) for k, v in columns.items()},
        "byte_order_mark": ["users", "orders", "impressions"],
        "line_ending": "\r\n",
    }
    return _Varied(
        tables={"users": users, "orders": orders, "events": events, "impressions": impressions},
        columns=columns, make_id=make_id, serialise=serialise, truth_users=truth,
        impression_ids=impressions["impression_id"].to_numpy(), manifest=manifest,
    )


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_text(path: Path, text: str, compress: bool) -> None:
    data = text.encode("utf-8")
    if compress:
        with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                     compresslevel=6) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def _truth_users(w: _World) -> pd.DataFrame:
    t = w.truth
    o = w.orders
    paid = o[o["paid"].to_numpy()]
    g = paid.groupby("user")
    last_s = g["local_s"].max()
    freq = g.size()
    money = g["amount"].sum()
    n = w.n_users
    last_day = np.full(n, -1, dtype=np.int64)
    last_day[last_s.index.to_numpy()] = last_s.to_numpy() // _DAY
    frequency = np.zeros(n, dtype=int)
    frequency[freq.index.to_numpy()] = freq.to_numpy()
    monetary = np.zeros(n)
    monetary[money.index.to_numpy()] = money.to_numpy()
    as_of_day = w.start_day + w.days
    has_paid = frequency > 0
    churn = t["churn_day"].to_numpy()
    churn_date = np.datetime_as_string((w.start_day + churn).astype("datetime64[D]"), unit="D")
    last_date = np.datetime_as_string(last_day.astype("datetime64[D]"), unit="D")
    return pd.DataFrame({
        "user_id": t["user_id"],
        "archetype": t["archetype"],
        "churn_day": np.where(churn >= 0, churn.astype(str), ""),
        "churn_date": np.where(churn >= 0, churn_date, ""),
        "has_paid_order": has_paid.astype(int),
        "paid_orders": frequency,
        "paid_amount": np.char.mod("%.2f", np.round(monetary, 2)),
        "last_paid_date": np.where(has_paid, last_date, ""),
        "recency_days": np.where(has_paid, (as_of_day - last_day).astype(str), ""),
        "top_category": np.array([c.name for c in CATEGORIES], dtype=object)[t["top_cat"].to_numpy()],
        "primary_device": np.array([d for d, _ in DEVICES], dtype=object)[t["device"].to_numpy()],
    })


def _truth_promotions(w: _World) -> pd.DataFrame:
    """The promotion calendar: one row per local date and category (every pair, 1.0 = list price)."""
    n_cat = len(CATEGORIES)
    dates = np.datetime_as_string((w.start_day + np.arange(w.days)).astype("datetime64[D]"), unit="D")
    return pd.DataFrame({
        "date": np.repeat(dates, n_cat),
        "weekday": np.repeat(_weekday(w.start_day + np.arange(w.days)), n_cat),
        "category": np.tile(np.array([c.name for c in CATEGORIES], dtype=object), w.days),
        "price_ratio": np.char.mod("%.2f", w.price_ratio.T.reshape(-1)),
    })


def _manifest(seed: int, n_users: int, days: int, end_date: date, defects: bool, compress: bool,
              w: _World, files: dict[str, Path], rows: dict[str, int], planted: dict[str, dict[str, int]],
              expected: dict[str, dict], truth_users: pd.DataFrame) -> dict[str, Any]:
    start = end_date - timedelta(days=days - 1)
    counts = truth_users["archetype"].value_counts()
    return {
        "generator": {"module": __name__, "version": GENERATOR_VERSION},
        "seed": seed,
        "users": n_users,
        "days": days,
        "start_date": start.isoformat(),
        "end_date": end_date.isoformat(),
        "as_of": (end_date + timedelta(days=1)).isoformat(),
        "timezone": _TZ_NAME,
        "defects": defects,
        "compressed": compress,
        "files": {k: p.name for k, p in files.items()},
        "truth_files": {
            "users": f"{TRUTH_DIR}/users.csv",
            "impressions": f"{TRUTH_DIR}/impressions.csv",
            "defects": f"{TRUTH_DIR}/defects.csv",
            "promotions": f"{TRUTH_DIR}/promotions.csv",
        },
        "rows": rows,
        "timestamp_formats": dict(TIMESTAMP_FORMATS),
        "hour_weights": _HOUR_WEIGHTS.tolist(),
        "weekday_weights": WEEKDAY_WEIGHTS.tolist(),
        "promotions": {"share": PROMOTIONS["share"], "ratios": list(PROMOTIONS["ratios"]),
                       "promotion_days": int((w.price_ratio < 1.0).sum())},
        "archetypes": [
            {
                "name": a.name, "description": a.description, "share": a.share, "users": int(counts.get(a.name, 0)),
                "buys": a.buys, "base_orders": a.base_orders, "extra_orders_per_30d": a.extra_orders_per_30d,
                "regular": a.regular, "order_fade": a.order_fade,
                "price_band": list(a.price_band), "extra_quantity": a.extra_quantity,
                "category_tilt": dict(a.category_tilt), "churn_share": a.churn_share,
                "churn_window": list(a.churn_window), "sessions_per_30d": a.sessions_per_30d,
                "impressions_per_30d": a.impressions_per_30d, "click_affinity": a.click_affinity,
            }
            for a in ARCHETYPES
        ],
        "categories": [
            {"name": c.name, "median_price": c.median_price, "price_sigma": c.price_sigma,
             "brands": list(c.brands), "male_tilt": c.male_tilt, "elasticity": c.elasticity}
            for c in CATEGORIES
        ],
        "catalog": {"items_per_category": _ITEMS_PER_CATEGORY, "preference_alpha": _PREF_ALPHA,
                    "band_full_items": _BAND_FULL_ITEMS},
        "orders": {"refund_share": _REFUND_SHARE, "empty_status_share": _EMPTY_STATUS_SHARE},
        "users_file": {"gender": {"M": 0.45, "F": 0.47, "": 0.08}, "birth_date_missing": 0.10,
                       "city_missing": 0.02, "phone_missing": 0.15, "id_number_given_birth_date": 0.65,
                       "opt_in": {"sms": 0.60, "push": 0.45, "email": 0.25},
                       "cities": {c: v[0] for c, v in CITIES.items()}},
        "devices": {"primary": dict(DEVICES), "primary_share": _PRIMARY_DEVICE_SHARE},
        "funnel": FUNNEL,
        "channels": {c: {"share": v[0], "positions": v[1], "cost_model": v[2], "cost_median": v[3]}
                     for c, v in CHANNELS.items()},
        "campaigns": {"per_channel": _CAMPAIGNS_PER_CHANNEL, "ads_per_campaign": _ADS_PER_CAMPAIGN,
                      "cost_sigma": _COST_SIGMA},
        "click_model": CLICK_MODEL,
        "defect_plan": {k: {kind: list(v) for kind, v in spec.items()} for k, spec in DEFECT_PLAN.items()}
        if defects else {},
        "planted": planted,
        "expected": expected,
    }


def generate(
    out_dir: Path,
    users: int = 20_000,
    days: int = 180,
    seed: int = 7,
    *,
    end_date: date = date(2026, 6, 30),
    defects: bool = True,
    compress: bool = False,
    progress: Progress | None = None,
    style: str = "default",
) -> GenerationSummary:
    """Write a synthetic input folder in the data contract, with ground truth.

    Args:
        out_dir: Folder to write to (created; existing contract files are overwritten).
        users: Number of clean users (defect rows in users.csv come on top).
        days: Length of the window; it ends at ``end_date`` inclusive.
        seed: Seed of every random draw; the same seed gives the same bytes.
        end_date: Last local day of the window; features are computed as of the day after.
        defects: Plant defective rows (DEFECT_PLAN); ``False`` writes clean files only.
        compress: Write ``.csv.gz`` / ``.jsonl.gz`` instead of plain files.
        progress: Called as ``progress(step_name, fraction_done)`` as the generation goes.
        style: ``"default"`` writes the files as they always were (same seed, same bytes).
            ``"varied"`` writes the same simulated world in other shapes the contract allows:
            placement names as ad positions, other id patterns and lengths (user ids 6-40
            characters), ISO timestamps in other zones with fractions next to local and epoch-ms
            ones, a UTF-8 BOM and CRLF line ends, other cities, brands, channels, campaign ids and
            device spellings, reordered CSV columns and JSON keys; it adds registered-only users
            (about 2/7 of ``users`` on top, archetype ``dormant`` in the truth), so that about
            30 % of the users have no order. The truth is renamed to match; the manifest has
            ``"style": "varied"`` and the mappings under ``"varied"``.

    Returns:
        What was written, including the reconciliation the ingest job must report.

    Raises:
        ValueError: ``users`` or ``days`` is too small (or too large for 6-digit user ids), or
            ``style`` is not one of :data:`STYLES`.
    """
    if users < 100 or users > 800_000:
        raise ValueError(f"users must be between 100 and 800,000, got {users}")
    if days < 7:
        raise ValueError(f"days must be >= 7, got {days}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    began = time.perf_counter()
    step = progress or (lambda _name, _fraction: None)
    out_dir = Path(out_dir)
    truth_dir = out_dir / TRUTH_DIR
    truth_dir.mkdir(parents=True, exist_ok=True)
    streams = dict(zip(_STEPS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STEPS)))))

    step("users", 0.0)
    w = _build_users(streams["users"], users, days, end_date)
    step("orders", 0.10)
    w.price_ratio = _promotions(streams["promotions"], days)
    _build_orders(streams["orders"], w)
    step("events", 0.20)
    _build_events(streams["events"], w)
    step("impressions", 0.40)
    camps = _build_impressions(streams["impressions"], w)

    step("formatting", 0.50)
    fmt = streams["writing"]
    tables = {
        "users": w.users.copy(),
        "orders": _order_rows(fmt, w),
        "events": _event_rows(fmt, w),
        "impressions": _impression_rows(fmt, w, camps),
    }
    varied = _vary(streams["varied"], w, camps, tables, end_date) if style == "varied" else None
    if varied is not None:
        tables = varied.tables
    prefixes = {"users": ("u", 6), "orders": ("o", 7), "events": ("e", 8), "impressions": ("im", 8)}
    plans = {
        name: _FilePlan(name, df, [], [], len(df) + 1, *prefixes[name])
        if varied is None else
        _FilePlan(name, df, [], [], len(df) + 1, *prefixes[name], columns=varied.columns[name],
                  make_id=varied.make_id[name], serialise=varied.serialise[name])
        for name, df in tables.items()
    }
    step("defects", 0.60)
    if defects:
        for plan in plans.values():  # users first: unknown user ids start well above its fresh ids
            start = plans["users"].next_id + 1000
            _plant(streams["defects"], plan, unknown_user=lambda i, s=start: plans["users"].id_for(s + i))

    files: dict[str, Path] = {}
    rows: dict[str, int] = {}
    planted: dict[str, dict[str, int]] = {}
    expected: dict[str, dict] = {}
    register: list[dict[str, Any]] = []
    for i, (name, plan) in enumerate(plans.items()):
        step(f"writing {name}", 0.65 + 0.07 * i)
        lines, reg, exp = _assemble(streams["defects"], plan)
        ds = dataset(name)
        path = out_dir / ds.file_names()[1 if compress else 0]
        (out_dir / ds.file_names()[0 if compress else 1]).unlink(missing_ok=True)  # never both variants
        header = [_csv_join(plan.columns)] if ds.fmt == "csv" else []
        if varied is None:
            _write_text(path, "\n".join(header + lines) + "\n", compress)
        else:  # a byte-order mark on the CSV files, CRLF line ends everywhere
            bom = "\ufeff" if ds.fmt == "csv" else ""
            _write_text(path, bom + "\r\n".join(header + lines) + "\r\n", compress)
        files[name], rows[name], expected[name] = path, len(lines), exp
        kinds: dict[str, int] = {}
        for r in reg:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        planted[name] = dict(sorted(kinds.items()))
        register.extend(reg)

    step("truth", 0.95)
    truth_users = _truth_users(w) if varied is None else varied.truth_users
    truth_users.to_csv(truth_dir / "users.csv", index=False, lineterminator="\n")
    pd.DataFrame({
        "impression_id": _ids("im", 1, len(w.impressions), 8) if varied is None else varied.impression_ids,
        "p_click": np.char.mod("%.6f", w.p_click),
    }).to_csv(truth_dir / "impressions.csv", index=False, lineterminator="\n")
    pd.DataFrame(register, columns=["dataset", "line", "record_id", "kind", "expected"]).to_csv(
        truth_dir / "defects.csv", index=False, lineterminator="\n")
    _truth_promotions(w).to_csv(truth_dir / "promotions.csv", index=False, lineterminator="\n")
    manifest = _manifest(seed, users, days, end_date, defects, compress, w, files, rows, planted, expected,
                         truth_users)
    if varied is not None:  # the default manifest stays byte-identical: no "style" key there
        manifest = {**manifest, "style": style, "timestamp_formats": varied.manifest["timestamp_formats"],
                    "varied": varied.manifest}
    manifest_path = truth_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - began
    step("done", 1.0)
    log.info("generated %s in %.1f s: %s", out_dir, seconds, ", ".join(f"{k}={v}" for k, v in rows.items()))
    return GenerationSummary(out_dir, files, rows, planted, expected, manifest_path, seconds)
