"""The documented parameters of the simulated world (docs/synthetic-data.md repeats every one
of them), and the constants of time and output every step shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bumped whenever the same seed would produce different bytes.
GENERATOR_VERSION = "2"
#: Sub-folder of the output folder that holds the ground truth.
TRUTH_DIR = "_truth"

_DAY = 86_400
#: Asia/Shanghai has been UTC+8 without daylight saving since 1991.
_TZ_OFFSET_S = 8 * 3600
_TZ_NAME = "Asia/Shanghai"

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
