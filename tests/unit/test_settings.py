from __future__ import annotations

import pytest

from outpost.settings import MongoSettings, MqttSettings, S3Settings, SettingsError, load


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env or .outpost/dev.env from the developer's tree
    for key in list(__import__("os").environ):
        if key.startswith("OUTPOST_"):
            monkeypatch.delenv(key)


def test_mqtt_url_with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_MQTT_URL", "mqtts://svc:p%40ss@broker.example:8884")
    settings = load(MqttSettings)
    assert (settings.host, settings.port, settings.tls) == ("broker.example", 8884, True)
    assert (settings.username, settings.password_value) == ("svc", "p@ss")


def test_mqtt_default_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_MQTT_URL", "mqtt://broker")
    assert load(MqttSettings).port == 1883
    monkeypatch.setenv("OUTPOST_MQTT_URL", "mqtts://broker")
    assert load(MqttSettings).port == 8883


def test_separate_credentials_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_MQTT_URL", "mqtt://a:b@broker")
    monkeypatch.setenv("OUTPOST_MQTT_USERNAME", "c")
    monkeypatch.setenv("OUTPOST_MQTT_PASSWORD", "d")
    settings = load(MqttSettings)
    assert (settings.username, settings.password_value) == ("c", "d")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://broker", "OUTPOST_MQTT_URL: scheme must be mqtt or mqtts, got 'http'"),
        ("mqtt://", "OUTPOST_MQTT_URL: missing host"),
        ("mqtt://broker:99999", "OUTPOST_MQTT_URL: Port out of range"),
    ],
)
def test_invalid_mqtt_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("OUTPOST_MQTT_URL", value)
    with pytest.raises(SettingsError) as caught:
        load(MqttSettings)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_required_setting() -> None:
    with pytest.raises(SettingsError, match=r"^OUTPOST_MQTT_URL: is required but not set$"):
        load(MqttSettings)


def test_mongo_url_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_MONGO_URL", "postgres://x")
    with pytest.raises(SettingsError, match="OUTPOST_MONGO_URL: expected a mongodb://"):
        load(MongoSettings)
    monkeypatch.setenv("OUTPOST_MONGO_URL", "mongodb://127.0.0.1:27017/")
    assert load(MongoSettings).database == "outpost"


def test_s3_settings_require_secret_and_valid_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPOST_S3_BUCKET", "Bad_Bucket")
    monkeypatch.setenv("OUTPOST_S3_ACCESS_KEY_ID", "key")
    with pytest.raises(SettingsError) as caught:
        load(S3Settings)
    assert "OUTPOST_S3_BUCKET:" in str(caught.value)
    assert "OUTPOST_S3_SECRET_ACCESS_KEY: is required but not set" in str(caught.value)


def test_dev_env_file_is_read_and_env_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".outpost").mkdir()
    (tmp_path / ".outpost/dev.env").write_text("OUTPOST_MQTT_URL=mqtt://from-dev-env:1\n")
    assert load(MqttSettings).host == "from-dev-env"
    (tmp_path / ".env").write_text("OUTPOST_MQTT_URL=mqtt://from-dotenv:1\n")
    assert load(MqttSettings).host == "from-dotenv"
    monkeypatch.setenv("OUTPOST_MQTT_URL", "mqtt://from-env:1")
    assert load(MqttSettings).host == "from-env"
