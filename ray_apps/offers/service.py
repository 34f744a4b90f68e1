"""GenerateOffer's business logic, independent of the transport.

An offer is decided by :func:`ray_apps.offers.policy.decide` from the user's segment, CLV
(``m:clv_predicted``), propensity (from ``m:expected_purchases``) and churn risk (the served
churn model, when there is one), sent on the channel the bandit picks among the channels
the user consented to and the campaign allows, and kept on the user's row
(``m:offer.<campaign>``) so that asking again while it is valid returns the same offer.
A campaign's ``max_offers`` is a counter on a shared row, incremented atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from cluster.core.errors import FailedPrecondition, InvalidArgument, NotFound, PlatformError
from cluster.core.settings import OfferSettings
from cluster.core.storage import ProfileStore, decode_float, decode_str
from cluster.core.storage.profile_store import INTERNAL_ROW_PREFIX
from protos.marketing.v1 import offer_pb2
from ray_apps.channels.service import ChannelChooser
from ray_apps.current import CurrentModel
from ray_apps.offers.policy import ScoreInputs, decide, propensity_from_expected

__all__ = ["OfferEngine", "CAMPAIGN_ID_RE", "campaign_row"]

CAMPAIGN_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCORE_CELLS = ("m:clv_predicted", "m:expected_purchases", "f:rfm_frequency")


def campaign_row(campaign_id: str) -> str:
    return f"{INTERNAL_ROW_PREFIX}campaign:{campaign_id}"


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class OfferEngine:
    def __init__(self, store: ProfileStore, chooser: ChannelChooser, churn: CurrentModel | None,
                 rules: OfferSettings, *, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.store = store
        self.chooser = chooser
        self.churn = churn
        self.rules = rules
        self._now = now

    def _churn_risk(self, user_id: str) -> float | None:
        if self.churn is None:
            return None
        try:
            return float(self.churn.get().risk(user_id).churn_probability)
        except (NotFound, FailedPrecondition):
            return None  # no churn model yet, or the user is not in its table

    def generate(self, user_id: str, campaign_id: str) -> offer_pb2.Offer:
        """The user's offer for the campaign (the valid one if already issued).

        Raises:
            InvalidArgument: malformed user_id or campaign_id.
            NotFound: unknown campaign, or no profile for the user.
            FailedPrecondition: no consented channel, campaign cap reached, no segments model.
        """
        if not campaign_id or not CAMPAIGN_ID_RE.match(campaign_id):
            raise InvalidArgument("campaign_id must be 1-64 characters of letters, digits, '_', '.', '-'",
                                  field="campaign_id")
        campaign = self.rules.campaigns.get(campaign_id)
        if campaign is None:
            raise NotFound(f"unknown campaign {campaign_id!r}; configured: {', '.join(sorted(self.rules.campaigns))}")
        cell = f"m:offer.{campaign_id}"
        _, segment, consent, held = self.chooser.user_context(user_id, (cell, *SCORE_CELLS))
        now = self._now()
        if cell in held:
            try:
                stored = json.loads(decode_str(held[cell]))
                valid = datetime.fromisoformat(stored["valid_until"].replace("Z", "+00:00")) > now
                # Consent withdrawn since: the old offer must not go out on that channel.
                if valid and consent.get(stored["channel"], False):
                    return self._message(user_id, campaign_id, stored, newly_issued=False)
            except (ValueError, KeyError, TypeError):
                pass  # unreadable or expired: issue a new one

        def num(col: str) -> float | None:
            return decode_float(held[col]) if col in held else None

        inputs = ScoreInputs(segment_name=segment, clv=num("m:clv_predicted"),
                             propensity=propensity_from_expected(num("m:expected_purchases")),
                             churn_risk=self._churn_risk(user_id), frequency=num("f:rfm_frequency"))
        decision = decide(inputs, campaign, self.rules)
        choice = self.chooser.bandit.choose(segment=segment, user_id=user_id, consent=consent,
                                            only=campaign.channels or None)
        if campaign.max_offers:
            issued = self.store.increment(campaign_row(campaign_id), "c:offers.issued", 1)
            if issued > campaign.max_offers:
                self.store.increment(campaign_row(campaign_id), "c:offers.issued", -1)
                raise FailedPrecondition(f"campaign {campaign_id!r} has issued its {campaign.max_offers} offers",
                                         field="campaign_id")
        start = now.replace(microsecond=0)
        stored = {
            "offer_id": hashlib.sha256(f"{user_id}\x00{campaign_id}\x00{_iso(start)}".encode()).hexdigest()[:20],
            "offer_type": decision.offer_type, "discount": decision.discount, "channel": choice.channel,
            "valid_from": _iso(start), "valid_until": _iso(start + timedelta(days=campaign.validity_days)),
            "rationale": decision.rationale,
            "inputs": {"segment_name": segment, "clv": inputs.clv, "propensity": inputs.propensity,
                       "churn_risk": inputs.churn_risk},
        }
        try:
            self.store.write_batch([(user_id, {cell: json.dumps(stored, separators=(",", ":"))})])
        except PlatformError:
            if campaign.max_offers:  # not issued after all: give the slot back
                self.store.increment(campaign_row(campaign_id), "c:offers.issued", -1)
            raise
        return self._message(user_id, campaign_id, stored, newly_issued=True)

    @staticmethod
    def _message(user_id: str, campaign_id: str, o: dict, *, newly_issued: bool) -> offer_pb2.Offer:
        i = o.get("inputs", {})
        return offer_pb2.Offer(
            offer_id=o["offer_id"], user_id=user_id, campaign_id=campaign_id, offer_type=o["offer_type"],
            discount=float(o["discount"]), valid_from=o["valid_from"], valid_until=o["valid_until"],
            channel=o["channel"], rationale=o["rationale"], newly_issued=newly_issued,
            inputs=offer_pb2.OfferInputs(segment_name=i.get("segment_name", ""), clv=i.get("clv"),
                                         propensity=i.get("propensity"), churn_risk=i.get("churn_risk")),
        )
