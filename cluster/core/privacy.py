"""Personal data: phone masking, ID-number encryption (AES-256-GCM, rotating keys), age bands.

What the platform does with each personal field (docs/privacy.md):

* ``phone`` is masked as it is ingested (:func:`mask_phone`: ``13812345678`` -> ``138****5678``);
  the clear number is never stored.
* ``id_number`` is encrypted as it is ingested (:meth:`KeyRing.encrypt`, associated data = the
  user id) and stored as a self-describing token ``v1.<key_id>.<base64url(nonce|ciphertext|tag)>``;
  only ``pmkt privacy reveal-id`` (DSAR and legal requests) decrypts it.
* ``birth_date`` reaches features only as an age band (:func:`age_band`).

Keys come from settings (``privacy``): an environment variable (``PMKT_PII_KEYS``,
``"k2:base64,k1:base64"``) or a key file (one ``key_id:base64`` per line, mode 0600). The first
key, or ``privacy.active_key_id``, encrypts; every key decrypts, so keys rotate by adding a new
one in front and re-encrypting at leisure (:meth:`KeyRing.rotate`). A key is never part of a
repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.core.keyfiles import create_private_file, read_private_file
from cluster.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound

if TYPE_CHECKING:
    from pyspark.sql import Column

    from cluster.core.settings import PrivacySettings, Settings

__all__ = [
    "AGE_BANDS",
    "ID_NUMBER_COLUMN",
    "HAS_ID_NUMBER_COLUMN",
    "PHONE_COLUMN",
    "TOKEN_VERSION",
    "KeyRing",
    "age_band",
    "age_band_column",
    "age_years",
    "generate_key",
    "init_key_file",
    "load_key_file",
    "load_keyring",
    "mask_phone",
    "reveal_id_numbers",
]

log = logging.getLogger(__name__)

#: Raw-zone column of the masked phone number (users).
PHONE_COLUMN = "phone_masked"
#: Raw-zone column of the encrypted ID number (users): a token, associated data = ``user_id``.
ID_NUMBER_COLUMN = "id_number_enc"
#: Raw-zone column telling whether a valid ID number was delivered (users).
HAS_ID_NUMBER_COLUMN = "has_id_number"

#: First field of every token; a new format gets a new version and old tokens stay readable.
TOKEN_VERSION = "v1"
_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # 96-bit random nonce, the size GCM is specified for
_TAG_BYTES = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# nonce + tag alone are 28 bytes = 38 base64url characters.
_TOKEN = re.compile(r"^v1\.([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{38,})$")
_PHONE = re.compile(r"^1[3-9]\d{9}$")

#: Age bands as (lowest age in the band, label), in order; an age falls in the last band whose
#: lowest age it reaches. Ages are whole years completed on the as-of day.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "<18"),
    (18, "18-24"),
    (25, "25-34"),
    (35, "35-44"),
    (45, "45-54"),
    (55, "55-64"),
    (65, "65+"),
)


# --- phone -----------------------------------------------------------------------------------


def mask_phone(phone: str | None) -> str | None:
    """Mask an 11-digit mainland mobile number, keeping the first 3 and last 4 digits.

    Args:
        phone: The number; surrounding spaces are ignored.

    Returns:
        ``138****5678`` for ``13812345678``; None for None, empty or anything that is not an
        11-digit mobile number (a malformed number is dropped, never half-masked).
    """
    if phone is None:
        return None
    s = phone.strip()
    if not _PHONE.match(s):
        return None
    return f"{s[:3]}****{s[7:]}"


# --- keys ------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> bytes:
    """A fresh random AES-256 key (32 bytes from the OS's CSPRNG)."""
    return secrets.token_bytes(_KEY_BYTES)


class KeyRing:
    """AES-256-GCM keys by id: the active one encrypts, all of them decrypt.

    Build it with :func:`load_keyring` (from settings) or directly from ``(key_id, key)`` pairs.
    Its repr names the key ids only. Pickling a key ring carries its keys: ingest does that on
    purpose, with :meth:`for_encryption`, to hand the active key to Spark's Python workers.

    Args:
        keys: ``(key_id, 32-byte key)`` pairs; ids are 1-32 letters, digits, ``_`` or ``-``.
        active_key_id: The key that encrypts; default the first one.

    Raises:
        ValueError: no keys, a bad or repeated key id, a key that is not 32 bytes, or an
            ``active_key_id`` that is not in ``keys`` (the message never contains a key).
    """

    def __init__(self, keys: Iterable[tuple[str, bytes]], active_key_id: str | None = None) -> None:
        ring: dict[str, bytes] = {}
        for key_id, key in keys:
            if not _KEY_ID.match(key_id):
                raise ValueError("a key id must be 1-32 letters, digits, '_' or '-'")
            if key_id in ring:
                raise ValueError(f"key id {key_id!r} appears twice")
            if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {_KEY_BYTES} bytes (AES-256)")
            ring[key_id] = key
        if not ring:
            raise ValueError("a key ring needs at least one key")
        active = active_key_id or next(iter(ring))
        if active not in ring:
            raise ValueError(f"active key id {active!r} is not among the keys ({', '.join(ring)})")
        self._keys = ring
        self._active = active
        self._ciphers: dict[str, object] = {}

    @property
    def active_key_id(self) -> str:
        """Id of the key new tokens are encrypted with."""
        return self._active

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Ids of every key, in the order given."""
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={self.key_ids!r}, active_key_id={self._active!r})"

    __str__ = __repr__

    def __getstate__(self) -> dict:
        # The AESGCM objects do not pickle; they are rebuilt on first use.
        return {"_keys": self._keys, "_active": self._active}

    def __setstate__(self, state: dict) -> None:
        self._keys = state["_keys"]
        self._active = state["_active"]
        self._ciphers = {}

    def for_encryption(self) -> KeyRing:
        """A ring with the active key only: what an encrypting worker needs, and no more."""
        return KeyRing([(self._active, self._keys[self._active])])

    def _cipher(self, key_id: str):
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            cipher = self._ciphers[key_id] = AESGCM(self._keys[key_id])
        return cipher

    @staticmethod
    def _associated(key_id: str, aad: str) -> bytes:
        # The version and key id are authenticated too, so a token's header cannot be edited.
        return b"\x00".join((b"pmkt-pii", TOKEN_VERSION.encode(), key_id.encode(), aad.encode("utf-8")))

    def encrypt(self, plaintext: str, aad: str) -> str:
        """Encrypt under the active key.

        Args:
            plaintext: The value (an ID number).
            aad: Associated data the token is bound to (the user id): decrypting needs the same.

        Returns:
            ``v1.<key_id>.<base64url(nonce | ciphertext | tag)>``, different on every call
            (random 96-bit nonce).
        """
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._cipher(self._active).encrypt(
            nonce, plaintext.encode("utf-8"), self._associated(self._active, aad)
        )
        return f"{TOKEN_VERSION}.{self._active}.{_b64url(nonce + sealed)}"

    @staticmethod
    def key_id_of(token: str) -> str:
        """The id of the key a token was encrypted with.

        Raises:
            InvalidArgument: ``token`` is not a ``v1`` token.
        """
        match = _TOKEN.match(token or "")
        if match is None:
            raise InvalidArgument(f"not a {TOKEN_VERSION} personal-data token", field="token")
        return match.group(1)

    def decrypt(self, token: str, aad: str) -> str:
        """Decrypt and authenticate a token made by :meth:`encrypt` with any key of the ring.

        Args:
            token: The token.
            aad: The associated data it was encrypted with (the user id).

        Raises:
            InvalidArgument: not a token, or it does not authenticate: tampered with, or made
                for another user id.
            FailedPrecondition: the token's key id is not in this ring (a retired key).
        """
        key_id = self.key_id_of(token)
        if key_id not in self._keys:
            raise FailedPrecondition(
                f"the token was encrypted with key id {key_id!r}, which is not among the keys "
                f"({', '.join(self._keys)}); add that key back to decrypt it",
                field="privacy",
            )
        from cryptography.exceptions import InvalidTag

        blob = _unb64url(_TOKEN.match(token).group(2))
        try:
            plain = self._cipher(key_id).decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], self._associated(key_id, aad)
            )
        except InvalidTag:
            raise InvalidArgument(
                "the token does not authenticate: it was altered, or belongs to another user", field="token"
            ) from None
        return plain.decode("utf-8")

    def rotate(self, token: str, aad: str) -> str:
        """Re-encrypt a token under the active key (unchanged if it already is).

        Raises:
            Same as :meth:`decrypt`.
        """
        if self.key_id_of(token) == self._active:
            self.decrypt(token, aad)  # still authenticate it: rotate never passes on a bad token
            return token
        return self.encrypt(self.decrypt(token, aad), aad)


def _parse_keys(entries: Iterable[str], where: str, field: str) -> list[tuple[str, bytes]]:
    """``key_id:base64`` entries -> pairs. Errors name the entry by number, never by content."""
    keys = []
    for n, entry in enumerate(entries, 1):
        key_id, sep, encoded = entry.strip().partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.match(key_id):
            raise ConfigError(
                f"{where}: key {n} is not written as key_id:base64 (key id: 1-32 letters, digits, '_' or '-')",
                field=field,
            )
        try:
            key = base64.b64decode(encoded.strip().replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: key {key_id!r} is not valid base64", field=field) from None
        if len(key) != _KEY_BYTES:
            raise ConfigError(
                f"{where}: key {key_id!r} is {len(key)} bytes; AES-256 needs {_KEY_BYTES}", field=field
            )
        keys.append((key_id, key))
    if not keys:
        raise ConfigError(f"{where}: no keys", field=field)
    return keys


def _read_key_file(path: Path) -> str:
    """The key file's text, refusing a file that group or others may read."""
    return read_private_file(path, "privacy.key_file", missing_hint="create it with `pmkt privacy init-key`")


def init_key_file(path: Path, key_id: str = "k1") -> bool:
    """Create a key file holding one random key, mode 0600, unless the file exists.

    The file appears atomically (written aside, then hard-linked into place), so two processes
    racing to create it end up sharing one key.

    Args:
        path: The key file.
        key_id: Id of the new key.

    Returns:
        True if the file was created, False if it already existed (it is left as it is).

    Raises:
        ValueError: ``key_id`` is not a valid key id.
    """
    if not _KEY_ID.match(key_id):
        raise ValueError("a key id must be 1-32 letters, digits, '_' or '-'")
    text = (
        "# Keys that encrypt personal data (docs/privacy.md). One key_id:base64 per line; the first\n"
        "# encrypts, all decrypt. Never commit, copy into tickets or print this file.\n"
        f"{key_id}:{base64.b64encode(generate_key()).decode('ascii')}\n"
    )
    if not create_private_file(Path(path), text):
        return False
    log.info("created key file %s with key id %s", path, key_id)
    return True


def load_keyring(
    privacy: PrivacySettings, env: Mapping[str, str] | None = None, create: bool | None = None
) -> KeyRing:
    """The key ring the settings point at.

    The environment variable ``privacy.key_env`` wins when it is set and not empty; otherwise
    the key file ``privacy.key_file`` is read (and created first when it is absent and
    ``privacy.create_key_file`` is true).

    Args:
        privacy: ``settings.privacy``.
        env: Environment to read (default ``os.environ``).
        create: Override ``privacy.create_key_file`` (False when a new key would be useless,
            as for decrypting).

    Raises:
        ConfigError: no key source, an unreadable or group/world-readable key file, a malformed
            key, or an ``active_key_id`` that is not among the keys; the message names the
            setting and never contains a key.
    """
    env = os.environ if env is None else env
    text = env.get(privacy.key_env, "").strip()
    if text:
        where = f"environment variable {privacy.key_env}"
        return _ring(_parse_keys(text.split(","), where, "privacy.key_env"), privacy.active_key_id, where,
                     "privacy.key_env")
    if privacy.key_file is None:
        raise ConfigError(
            f"no key to encrypt personal data: set the environment variable {privacy.key_env} "
            "(key_id:base64,...) or privacy.key_file (`pmkt privacy init-key` creates one)",
            field="privacy.key_file",
        )
    if (privacy.create_key_file if create is None else create) and not privacy.key_file.exists():
        init_key_file(privacy.key_file)
    return load_key_file(privacy.key_file, privacy.active_key_id)


def load_key_file(path: Path, active_key_id: str | None = None) -> KeyRing:
    """The key ring in a key file (one ``key_id:base64`` per line; ``#`` comments, blank lines).

    Raises:
        ConfigError: the file is missing, not a regular file, group/world-accessible, or holds a
            malformed key; or ``active_key_id`` is not in it.
    """
    where, field = f"privacy.key_file {path}", "privacy.key_file"
    lines = _read_key_file(Path(path)).splitlines()
    keys = _parse_keys([ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")], where, field)
    return _ring(keys, active_key_id, where, field)


def _ring(keys: list[tuple[str, bytes]], active_key_id: str | None, where: str, field: str) -> KeyRing:
    if active_key_id is not None and active_key_id not in dict(keys):
        raise ConfigError(
            f"privacy.active_key_id {active_key_id!r} is not among the keys of the {where}",
            field="privacy.active_key_id",
        )
    try:
        return KeyRing(keys, active_key_id)
    except ValueError as exc:  # a repeated key id; KeyRing's messages never hold a key
        raise ConfigError(f"{where}: {exc}", field=field) from None


# --- lawful access ---------------------------------------------------------------------------


def reveal_id_numbers(settings: Settings, user_id: str, reason: str, keyring: KeyRing | None = None) -> list[str]:
    """Decrypt the ID numbers the raw zone holds for one user, for a DSAR or legal request.

    Every call, found or not, leaves an audit record in the lake
    (``reports/privacy/reveal/<UTC time>-<random>.json``: user id, reason, operator, outcome,
    never the ID number).

    Args:
        settings: Platform settings (lake and privacy).
        user_id: The user.
        reason: Why (the request's reference); required, recorded in the audit record.
        keyring: Keys to decrypt with; default :func:`load_keyring` (never creates a key).

    Returns:
        The distinct ID numbers stored for the user (one, unless deliveries disagreed).

    Raises:
        InvalidArgument: ``reason`` is empty.
        NotFound: the user is not in the raw users table, or has no ID number stored.
        FailedPrecondition: the user was forgotten (a tombstone): nothing is revealed, the refusal is audited.
        ConfigError, FailedPrecondition: no usable key (see :func:`load_keyring`, :meth:`KeyRing.decrypt`).
    """
    from cluster.core.catalog import RAW, REVEAL_AUDIT
    from cluster.core.storage import open_lake

    if not reason.strip():
        raise InvalidArgument("a reason (the request's reference) is required", field="reason")
    from cluster.core.tombstones import Tombstones

    lake = open_lake(settings)
    outcome = "error"
    try:
        if Tombstones(lake).is_forgotten(user_id):
            outcome = "refused: user forgotten"
            raise FailedPrecondition(f"user {user_id!r} was forgotten (`pmkt privacy forget`): their ID number is "
                                     "not revealed", field="user_id")
        ring = keyring or load_keyring(settings.privacy, create=False)
        tokens: list[str | None] = []
        users = RAW["users"]
        for part in users.list_dir(lake):
            if not part.startswith("dt="):
                continue
            frame = lake.read_parquet(*users.parts(part))
            mine = frame[frame["user_id"] == user_id]
            if ID_NUMBER_COLUMN in mine.columns:
                tokens += [t if isinstance(t, str) else None for t in mine[ID_NUMBER_COLUMN]]
            else:  # written before ID numbers were encrypted: nothing to reveal there
                tokens += [None] * len(mine)
        if not tokens:
            outcome = "user not found"
            raise NotFound(f"user {user_id!r} is not in the raw users table", field="user_id")
        values = sorted({ring.decrypt(t, user_id) for t in tokens if t})
        if not values:
            outcome = "no ID number stored"
            raise NotFound(f"no ID number is stored for user {user_id!r}", field="user_id")
        outcome = f"revealed {len(values)}"
        return values
    finally:
        now = datetime.now(timezone.utc)
        record = {
            "action": "reveal-id",
            "user_id": user_id,
            "reason": reason,
            "operator": _operator(),
            "at": now.isoformat(timespec="seconds"),
            "outcome": outcome,
        }
        name = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.json"
        REVEAL_AUDIT.write_json(lake, record, name)
        log.warning("audit: reveal-id for user %s by %s: %s", user_id, record["operator"], outcome)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return f"uid {os.getuid()}"


# --- age bands -------------------------------------------------------------------------------


def age_years(birth_date: date, as_of: date) -> int:
    """Whole years completed on ``as_of``. Someone born on 29 February has a birthday on
    1 March in years without one."""
    return as_of.year - birth_date.year - ((as_of.month, as_of.day) < (birth_date.month, birth_date.day))


def age_band(birth_date: date | None, as_of: date) -> str | None:
    """The age band (:data:`AGE_BANDS`) of someone born on ``birth_date``, on ``as_of``.

    Bands: ``<18``, ``18-24``, ``25-34``, ``35-44``, ``45-54``, ``55-64``, ``65+``; the day of the
    18th birthday is the first day in ``18-24``.

    Returns:
        The label; None for an unknown birth date or one after ``as_of``.
    """
    if birth_date is None or birth_date > as_of:
        return None
    age = age_years(birth_date, as_of)
    label = AGE_BANDS[0][1]
    for lowest, name in AGE_BANDS:
        if age >= lowest:
            label = name
    return label


def age_band_column(birth_date: Column, as_of: date | Column) -> Column:
    """:func:`age_band` as a Spark column, for feature jobs.

    Args:
        birth_date: A date column.
        as_of: The as-of day, a date or a date column.
    """
    from pyspark.sql import functions as F

    day = F.lit(as_of) if isinstance(as_of, date) else as_of
    before_birthday = (F.month(day) * 100 + F.dayofmonth(day)) < (F.month(birth_date) * 100 + F.dayofmonth(birth_date))
    age = F.year(day) - F.year(birth_date) - before_birthday.cast("int")
    band = None
    for lowest, name in reversed(AGE_BANDS):
        band = F.when(age >= lowest, F.lit(name)) if band is None else band.when(age >= lowest, F.lit(name))
    return F.when(birth_date.isNotNull() & (birth_date <= day), band).cast("string")
