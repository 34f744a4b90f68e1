"""ChooseChannel / ReportOutcome's business logic, independent of the transport.

A user's pool is their GetSegment answer: a K-means segment, or ``no_purchases`` (id -1) for a
known user without a paid order. A user with RFM but without the CLV the model needs (CLV built
after RFM) keeps pooling under ``none``, also with id -1, until the CLV build catches up.
"""

from __future__ import annotations

from collections.abc import Mapping

from cluster.core.contract import validate_user_id
from cluster.core.errors import InvalidArgument, NotFound
from cluster.core.storage import ProfileStore, decode_flag
from protos.marketing.v1 import channel_pb2
from ray_apps.channels.bandit import NO_SEGMENT, ChannelBandit
from ray_apps.segments.service import (
    EXTRA_CELLS,
    KNOWN_USER_CELLS,
    NO_PURCHASES_ID,
    NO_PURCHASES_NAME,
    RFM_CELLS,
    CurrentSegmentModel,
)

__all__ = ["ChannelChooser", "consent_cells", "consent_of"]


def consent_cells(channels: tuple[str, ...]) -> list[str]:
    return [f"a:opt_in_{ch}" for ch in channels]


def consent_of(cells: Mapping[str, bytes], channels: tuple[str, ...]) -> dict[str, bool]:
    """Consent per channel; a missing flag is no consent."""
    return {ch: decode_flag(cells.get(f"a:opt_in_{ch}")) for ch in channels}


class ChannelChooser:
    def __init__(self, store: ProfileStore, segments: CurrentSegmentModel, bandit: ChannelBandit, *,
                 max_user_id_length: int) -> None:
        self.store = store
        self.segments = segments
        self.bandit = bandit
        self.max_user_id_length = max_user_id_length
        # The known-user cells make one read tell a user without purchases from an unknown id.
        self._cells = [*consent_cells(bandit.channels), *RFM_CELLS, *EXTRA_CELLS.values(), *KNOWN_USER_CELLS]

    def user_context(self, user_id: str, extra: tuple[str, ...] = ()
                     ) -> tuple[int, str, dict[str, bool], dict[str, bytes]]:
        """(segment id, segment name, consent, cells) of a user; ``extra`` cells are read in
        the same call. The segment is GetSegment's (``no_purchases``, -1, without a paid
        order), or -1 and ``none`` for a user whose CLV the model needs is not built yet.

        Raises:
            NotFound: the user has no profile.
            FailedPrecondition: no segments model yet.
        """
        validate_user_id(user_id, self.max_user_id_length)
        lookup = self.segments.lookup()
        cells = self.store.read(user_id, [*self._cells, *extra])
        if not cells:
            raise NotFound(f"no profile for user {user_id!r}")
        try:
            seg = lookup.from_cells(user_id, cells, known=True)
            segment_id, segment = seg.segment_id, seg.segment_name
        except NotFound:  # RFM but no CLV yet: the pool of unsegmented users
            segment_id, segment = -1, NO_SEGMENT
        return segment_id, segment, consent_of(cells, self.bandit.channels), cells

    def _segment_name(self, segment_id: int) -> str:
        if segment_id == NO_PURCHASES_ID:
            return NO_PURCHASES_NAME
        names = self.segments.lookup().model.names_
        if not 0 <= segment_id < len(names):
            raise InvalidArgument(f"segment_id must be 0..{len(names) - 1} for the served segments model, "
                                  f"or {NO_PURCHASES_ID} for {NO_PURCHASES_NAME}", field="segment_id")
        return names[segment_id]

    def _target(self, user_id: str | None, segment_id: int | None) -> tuple[str | None, int, str, dict | None]:
        if (user_id is None) == (segment_id is None):
            raise InvalidArgument("target: give exactly one of user_id and segment_id", field="target")
        if user_id is not None:
            sid, name, consent, _ = self.user_context(user_id)
            return user_id, sid, name, consent
        return None, segment_id, self._segment_name(segment_id), None

    def choose(self, *, user_id: str | None = None, segment_id: int | None = None
               ) -> channel_pb2.ChooseChannelResponse:
        uid, sid, name, consent = self._target(user_id, segment_id)
        choice = self.bandit.choose(segment=name, user_id=uid, consent=consent)
        return channel_pb2.ChooseChannelResponse(
            channel=choice.channel, segment_id=sid, segment_name=name,
            arms=[channel_pb2.ChannelArm(channel=a.channel, trials=a.trials, conversions=a.conversions,
                                         posterior_mean=a.posterior_mean, sample=a.sample) for a in choice.arms],
            excluded=choice.excluded,
        )

    def report(self, *, channel: str, converted: bool, user_id: str | None = None, segment_id: int | None = None
               ) -> channel_pb2.ReportOutcomeResponse:
        self.bandit.check_channel(channel)
        uid, sid, name, _ = self._target(user_id, segment_id)
        self.bandit.report(segment=name, channel=channel, converted=converted, user_id=uid)
        trials, conversions = self.bandit.state(segment=name, user_id=uid)[channel]
        return channel_pb2.ReportOutcomeResponse(channel=channel, segment_id=sid, segment_name=name,
                                                 trials=trials, conversions=conversions)
