import pytest

from pricepipe.config import DatabaseSettings, RedisSettings, mask_url
from pricepipe.exceptions import ConfigError


def test_env_then_overrides() -> None:
    env = {"PRICEPIPE_REDIS_URL": "redis://h:1/0", "PRICEPIPE_REDIS_SHARDS": "16"}
    s = RedisSettings.from_env(env)
    assert (s.url, s.shards) == ("redis://h:1/0", 16)
    s = RedisSettings.from_env(env, url="redis://other:2/0", shards=None)
    assert (s.url, s.shards) == ("redis://other:2/0", 16)


def test_bad_values_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="PRICEPIPE_REDIS_SHARDS"):
        RedisSettings.from_env({"PRICEPIPE_REDIS_SHARDS": "many"})
    with pytest.raises(ConfigError):
        RedisSettings.from_env({"PRICEPIPE_REDIS_SHARDS": "0"})
    with pytest.raises(ConfigError):
        RedisSettings.from_env({}, nonsense=1)


def test_passwords_never_print() -> None:
    s = DatabaseSettings(url="postgresql://writer:s3cret@db:5432/pp")
    assert "s3cret" not in repr(s) and "****" in repr(s)
    assert mask_url("redis://:pw@h:1/0") == "redis://:****@h:1/0"


def test_missing_url_explains_itself() -> None:
    with pytest.raises(ConfigError, match="pricepipe up"):
        RedisSettings().require_url()


def test_documentation_rows_cover_every_field() -> None:
    names = [row[0] for row in DatabaseSettings.documentation()]
    assert names == ["PRICEPIPE_DATABASE_URL", "PRICEPIPE_DATABASE_READ_URL",
                     "PRICEPIPE_DATABASE_STATEMENT_TIMEOUT_MS", "PRICEPIPE_DATABASE_POOL_MAX"]
