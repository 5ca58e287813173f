"""`infer plugins`: what it prints and its exit status."""

from __future__ import annotations

import json

import pytest

from infer_core.cli import main


def test_human_listing_shows_each_plugin_and_its_registrations(capsys, monkeypatch):
    monkeypatch.delenv("INFER_DISABLE_PLUGINS", raising=False)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("infer-core 0.1.0 (plugin API 1)\n")
    assert "\ninfer_core  infer-core 0.1.0  (plugin API 1, built in)\n" in out
    assert "  cache backend      contiguous" in out
    assert "\ninfer_example_policy  infer-example-policy 0.3.0  (plugin API 1)\n" in out
    assert "  scheduler policy   shortest_prompt_first" in out


def test_disabled_plugins_are_listed_as_disabled(capsys, monkeypatch):
    monkeypatch.setenv("INFER_DISABLE_PLUGINS", "infer_example_policy")
    assert main(["plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    example = next(p for p in report["plugins"] if p["name"] == "infer_example_policy")
    assert example["state"] == "disabled"
    assert example["registers"] == {}


def test_broken_plugin_is_listed_with_its_error_and_exit_status_1(capsys, make_distribution):
    make_distribution("broken-thing", "0.2.0", {"broken_thing": "broken_thing_plugin"},
                      {"broken_thing_plugin": "raise ImportError('needs libfoo')\n"})
    assert main(["plugins", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    broken = next(p for p in report["plugins"] if p["name"] == "broken_thing")
    message = (
        "error importing plugin 'broken_thing' (broken-thing 0.2.0): ImportError: needs "
        "libfoo. To start without it: INFER_DISABLE_PLUGINS=broken_thing."
    )
    assert broken["state"] == "error"
    assert broken["error"] == message
    assert report["errors"] == [message]
    assert main(["plugins"]) == 1
    assert f"  error: {message}" in capsys.readouterr().out


def test_unknown_arguments_are_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plugins", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
