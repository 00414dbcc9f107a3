"""Label Studio rules that need no server: the label config, which annotation wins, the API
key, and the `[labelstudio]` config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CLASSES

from sslall.config import LabelStudioConfig, load_config
from sslall.errors import ConfigError, LabelStudioError
from sslall.labelstudio._client import (
    LabelStudioClient,
    choice_result,
    config_choices,
    decide,
    label_config,
    read_api_key,
)

pytestmark = pytest.mark.labelstudio


def test_label_config_offers_exactly_the_classes_even_with_odd_names() -> None:
    classes = ("Pre-B", 'say "hi"', "A&B <1>", "L'3")
    assert config_choices(label_config(classes)) == set(classes)
    assert config_choices("not xml") == set()


def ann(label=None, *, when="2026-01-01T00:00:0", n=0, who=7, cancelled=False, result=None):
    return {"id": n, "updated_at": f"{when}{n}", "completed_by": who, "was_cancelled": cancelled,
            "result": result if result is not None else ([] if label is None else
                                                         choice_result(label))}


def test_decide_majority_then_latest_then_skips() -> None:
    users = {7: "ann@lab", 8: "bob@lab"}
    d = decide([ann("L1", n=1), ann("L3", n=2), ann("L3", n=3, who=8)], CLASSES, users)
    assert (d.kind, d.label, d.annotator, d.rule) == ("label", "L3", "bob@lab", "2 of 3 annotations")
    d = decide([ann("L2", n=1), ann("L1", n=2)], CLASSES, users)
    assert (d.label, d.rule) == ("L1", "tie between L1, L2, the latest annotation wins")
    d = decide([ann(cancelled=True, n=1), ann("L2", n=2)], CLASSES, users)
    assert (d.kind, d.label) == ("label", "L2")
    d = decide([ann(cancelled=True, n=1, who={"email": "x@lab"})], CLASSES, users)
    assert (d.kind, d.annotator) == ("skip", "x@lab")
    d = decide([ann("Bogus", n=1), ann(n=2, result=choice_result("L1") + choice_result("L2"))],
               CLASSES, users)
    assert d.kind == "none" and len(d.invalid) == 2
    assert "'Bogus' is not a class (allowed: L1, L2, L3)" in d.invalid[0]
    assert "2 classes chosen" in d.invalid[1]
    d = decide([ann("Bogus", n=1), ann("L2", n=2)], CLASSES, users)
    assert (d.kind, d.label, len(d.invalid)) == ("label", "L2", 1)


def test_api_key_from_env_then_file_and_never_in_a_message(tmp_path: Path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file-0123456789\n")
    ls = LabelStudioConfig(url="http://127.0.0.1:9", api_key_file=str(key_file))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env-0123456789")
    assert read_api_key(ls) == "from-env-0123456789"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    assert read_api_key(ls) == "from-file-0123456789"
    assert read_api_key(LabelStudioConfig(api_key_file="key"), base=tmp_path) == "from-file-0123456789"
    with pytest.raises(LabelStudioError, match="no Label Studio API key"):
        read_api_key(LabelStudioConfig())
    with pytest.raises(LabelStudioError, match="cannot read the API key file"):
        read_api_key(LabelStudioConfig(api_key_file=str(tmp_path / "nope")))
    from label_studio_sdk.core.api_error import ApiError

    client = LabelStudioClient("http://127.0.0.1:9", "secret-key-0123456789")

    def fails():
        raise ApiError(status_code=500, body={"detail": "token secret-key-0123456789 is bad"})

    with client, pytest.raises(LabelStudioError) as err:
        client._call("testing", fails)
    assert "secret-key" not in str(err.value) and "***" in str(err.value)


def test_labelstudio_config_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "sslall.toml"
    for text, key in (('url = "ftp://x"', "labelstudio.url"), ('images = "s3"', "labelstudio.images"),
                      ("batch_size = 0", "labelstudio.batch_size"), ('project = "ab"',
                                                                      "labelstudio.project")):
        path.write_text(f'classes = ["A", "B"]\n[labelstudio]\n{text}\n')
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.key == key
    path.write_text('classes = ["A", "B"]\n[labelstudio]\nurl = "http://127.0.0.1:8080"\n'
                    'project = "42"\n')
    assert load_config(path).labelstudio.project == "42"
