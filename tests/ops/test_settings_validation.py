"""Settings are range-checked at load, and a rejection names where the value came from."""

from __future__ import annotations

import pytest

from reloop.ops.settings import Settings, SettingsError, load_settings


@pytest.mark.parametrize("name,value,needle", [
    ("RELOOP_WORKER__ATTRIBUTION_WINDOW_S", "-5", "attribution_window_s must be > 0"),
    ("RELOOP_WORKER__ATTRIBUTION_WINDOW_S", "0", "attribution_window_s must be > 0"),
    ("RELOOP_WORKER__WEB_PORT", "99999", "web_port must be in 0..65535"),
    ("RELOOP_WORKER__WEB_PORT", "-1", "web_port must be in 0..65535"),
    ("RELOOP_WORKER__WEB_PORT", "abc", "web_port: Expected `int`"),
    ("RELOOP_WORKER__WEB_BIND", "localhost", "web_bind must be an IP address"),
    ("RELOOP_WORKER__WEB_TOKEN", "short", "web_token must be at least 8"),
    ("RELOOP_KAFKA__BROKER", "http://x", "kafka://host:port"),
    ("RELOOP_KAFKA__BROKER", "k1:9092", "kafka://host:port"),
    ("RELOOP_REPLAY__WARMUP", "1.5", "warmup must be in [0, 1)"),
    ("RELOOP_REPLAY__WARMUP", "1", "warmup must be in [0, 1)"),
    ("RELOOP_ERROR_MEMORY__LAM", "-1", "lam must be finite and >= 0"),
    ("RELOOP_WORKER__NOPE", "1", "unknown field `nope`"),
    ("RELOOP_WORKR__X", "1", "unknown field `workr`"),
])
def test_env_rejection_names_the_variable(name, value, needle):
    with pytest.raises(SettingsError) as info:
        load_settings(env={name: value})
    msg = str(info.value)
    assert f"{name}={value}" in msg and needle in msg, msg
    assert "$." not in msg  # the source, not msgspec's JSON path


@pytest.mark.parametrize("name,value,field,expected", [
    ("RELOOP_KAFKA__BROKER", "kafka://k1:9092,k2:9093", "broker", "kafka://k1:9092,k2:9093"),
    ("RELOOP_KAFKA__BROKER", "kafka://[::1]:9092", "broker", "kafka://[::1]:9092"),
    ("RELOOP_WORKER__WEB_BIND", "0.0.0.0", "web_bind", "0.0.0.0"),
    ("RELOOP_WORKER__WEB_BIND", "::", "web_bind", "::"),
    ("RELOOP_WORKER__WEB_PORT", "0", "web_port", 0),
    ("RELOOP_REPLAY__WARMUP", "0.0", "warmup", 0.0),
])
def test_valid_values_load(name, value, field, expected):
    s = load_settings(env={name: value})
    section = name.removeprefix("RELOOP_").split("__")[0].lower()
    assert getattr(getattr(s, section), field) == expected


def test_defaults_are_safe():
    w = Settings().worker
    assert (w.web_bind, w.web_token, w.web_faust_internals) == ("127.0.0.1", None, False)


def test_file_rejection_names_file_line_and_key(tmp_path):
    cfg = tmp_path / "reloop.toml"
    cfg.write_text("# comment\n[worker]\nweb_port = 80\n\n[error_memory]\ntables = 8\nlam = -2.0\n")
    with pytest.raises(SettingsError, match=r"reloop\.toml:7 \[error_memory\] lam: lam must be"):
        load_settings(cfg, env={})
    cfg.write_text("[replay]\nwarmup = 2\n")
    with pytest.raises(SettingsError, match=r"reloop\.toml:2 \[replay\] warmup"):
        load_settings(cfg, env={})


def test_env_wins_over_file_and_is_named(tmp_path):
    cfg = tmp_path / "reloop.toml"
    cfg.write_text("[worker]\nweb_port = 80\n")
    assert load_settings(cfg, env={"RELOOP_WORKER__WEB_PORT": "81"}).worker.web_port == 81
    with pytest.raises(SettingsError, match="RELOOP_WORKER__WEB_PORT=70000"):
        load_settings(cfg, env={"RELOOP_WORKER__WEB_PORT": "70000"})


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, env={})


def test_overrides_are_checked_and_named():
    with pytest.raises(SettingsError, match=r"worker\.web_port=70000"):
        Settings().with_overrides(worker={"web_port": 70000})
    with pytest.raises(SettingsError, match="kafka.broker='http://h:1'"):
        Settings().with_overrides(kafka={"broker": "http://h:1"})


def test_cross_section_check_names_the_sources_it_mentions():
    with pytest.raises(SettingsError, match=r"from RELOOP_LIMITS__MEDIA_DIM=16: media\.dim \(32\) must equal"):
        load_settings(env={"RELOOP_LIMITS__MEDIA_DIM": "16"})
