"""A registry signing key for tests that build a :class:`~ray_apps.registry.ModelRegistry` on a bare
lake (no settings): fixed, so two registries of one test agree; never a production key."""

from cluster.core.signing import SigningKey

TEST_REGISTRY_KEY = SigningKey(b"pmkt-tests-registry-signing-key-0123456789")
OTHER_REGISTRY_KEY = SigningKey(b"pmkt-tests-another-registry-key-9876543210")
