"""The prompt's trigger word is the run's ``captions.trigger``."""

from __future__ import annotations

from pathlib import Path

from machining_t2v.instructions.trigger import configured_trigger

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_each_environment_gives_its_captions_trigger(tmp_path):
    assert configured_trigger(conf_source=CONF) == "mtv"
    assert configured_trigger("sd15", conf_source=CONF) == "ohwx"
    assert configured_trigger(conf_source=tmp_path / "no-conf") == "mtv"  # the parameters' default
