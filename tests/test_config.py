"""Job configs: YAML + --set, validation errors, --help, reuse by subclassing."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from sew_pipeline.config import (ConfigError, DecodeConfig, InferenceConfig, LabelConfig, PipelineConfig, TranscribeConfig, load_config, opt,
                                 redacted_dict)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_and_set_overrides_the_required_keys():
    cfg = load_config(TranscribeConfig, REPO / "configs/transcribe_corpus.yaml", [
        "manifest=s3://bucket/corpus/manifest.jsonl", "output=s3://bucket/out", "model=demo-ctc",
        "storage_options.endpoint_url=http://127.0.0.1:9000", "storage_options.region=eu-west-1",
        "inference.num_actors=3", "decode.max_duration_s=3600"])
    assert cfg.manifest == "s3://bucket/corpus/manifest.jsonl" and cfg.output == "s3://bucket/out"
    assert cfg.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"}
    assert cfg.inference.num_actors == 3 and cfg.inference.cpus_per_actor == 1.0
    assert cfg.decode.max_duration_s == 3600.0 and cfg.task == "ctc"
    label = load_config(LabelConfig, REPO / "configs/label_archive.yaml", ["decode.batch_rows=2"])
    assert label.task == "classification" and label.model == "demo-kws"
    assert label.decode.channels == "split" and label.decode.batch_rows == 2  # section defaults kept


def test_storage_options_as_a_whole_mapping():
    cfg = load_config(TranscribeConfig, None, ["manifest=m", "output=o",
                                               'storage_options={"endpoint_url": "http://h:1", "key": "k"}'])
    assert cfg.storage_options == {"endpoint_url": "http://h:1", "key": "k"}


@pytest.mark.parametrize("sets, message", [
    (["manifest=m", "output=o", "windw_s=3"], "unknown config key(s): windw_s"),
    (["manifest=m", "output=o", "inference.num_actor=2"], "inference.num_actor"),
    (["manifest=m", "output=o", "window_s=long"], "window_s: expected float, got str"),
    (["manifest=m", "output=o", "inference.num_actors=1.5"], "inference.num_actors: expected Optional[int]"),
    (["manifest=m", "output=o", "resume=maybe"], "resume: expected bool"),
    (["manifest=m", "output=o", "inference.use_gpu=always"], "inference.use_gpu: must be one of"),
    (["manifest=m", "output=o", "storage_options=3"], "storage_options: expected dict"),
    (["output=o"], "manifest: required"),
    (["manifest=m", "output=o", "overlap_s=20", "window_s=30"], "overlap_s"),
    (["manifest=m", "output=o", "nonsense"], "--set expects key=value"),
])
def test_invalid_configs_are_clear_errors(sets, message):
    with pytest.raises(ConfigError) as err:
        load_config(TranscribeConfig, None, sets)
    assert message in str(err.value)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("manifest: m\noutput: o\ninference:\n  batch_rows: [1]\n")
    with pytest.raises(ConfigError, match=r"inference.batch_rows: expected int, got list"):
        load_config(TranscribeConfig, bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TranscribeConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TranscribeConfig, tmp_path / "nope.yaml")


@dataclasses.dataclass
class _WithTypedSecrets(TranscribeConfig):
    api_token: int = opt(0, "a typed secret-looking option")
    auth_key: Literal["a", "b"] = opt("a", "a secret-looking choice")
    tokens: list[int] = opt([], "secret-looking list items")


@pytest.mark.parametrize("setting, message", [
    ("api_token=sup3rs3cret", "api_token: expected int, got str <redacted>"),  # _type_error
    ("auth_key=sup3rs3cret", "auth_key: must be one of 'a', 'b', got <redacted>"),  # a Literal's choices
    ("tokens=[1, sup3rs3cret]", "tokens[1]: expected int, got str <redacted>"),  # a list item's key
])
def test_secrets_are_not_echoed_in_errors(setting, message):
    # Each of these errors quotes the offending value unless the key looks like a secret: with redaction broken
    # the message would read "... got str 'sup3rs3cret'".
    with pytest.raises(ConfigError) as err:
        load_config(_WithTypedSecrets, None, ["manifest=m", "output=o", setting])
    assert str(err.value) == message
    with pytest.raises(ConfigError, match="'sup3rs3cret'"):  # the same error on a plain key does quote it
        load_config(_WithTypedSecrets, None, ["manifest=m", "output=o", "limit=sup3rs3cret"])


def test_secrets_are_not_in_the_logged_run_config(tmp_path, monkeypatch, caplog):
    """ray_pipeline.run logs the run's config (INFO) before the first pass: read that log record."""
    from sew_pipeline import ray_pipeline

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # the first pass would start here: the config line has been logged by now

    monkeypatch.setattr(ray_pipeline, "ensure_ray", lambda *a, **k: None)  # no cluster needed for this
    monkeypatch.setattr(ray_pipeline, "_cluster", lambda *a, **k: None)
    monkeypatch.setattr(ray_pipeline.plan, "check", lambda *a, **k: {"num_cpus": 1})
    monkeypatch.setattr(ray_pipeline.plan, "actor_count", lambda *a, **k: 1)
    monkeypatch.setattr(ray_pipeline, "_write_pass", stop)
    (tmp_path / "m.jsonl").write_text('{"audio_filepath": "a.wav", "id": "a"}\n')
    cfg = load_config(TranscribeConfig, None, [
        f"manifest={tmp_path / 'm.jsonl'}", f"output={tmp_path / 'out'}", "model=demo-ctc",
        "storage_options.secret=sup3rs3cret", "storage_options.key=AKIAEXAMPLEKEY",
        "storage_options.endpoint_url=http://127.0.0.1:1"])
    with caplog.at_level("INFO", logger="sew_pipeline.ray_pipeline"), pytest.raises(Stop):
        ray_pipeline.run(cfg)
    logged = [r.getMessage() for r in caplog.records if r.name == "sew_pipeline.ray_pipeline"]
    config_lines = [line for line in logged if " config {" in line]
    assert len(config_lines) == 1, logged
    line = config_lines[0]
    # the line is the config itself (so it would carry the secret if redacted_dict passed values through)
    assert "'endpoint_url': 'http://127.0.0.1:1'" in line and "'model': 'demo-ctc'" in line, line
    assert "'secret': '<redacted>'" in line and "'key': '<redacted>'" in line, line
    assert "sup3rs3cret" not in caplog.text and "AKIAEXAMPLEKEY" not in caplog.text
    shown = str(redacted_dict(cfg))
    assert "sup3rs3cret" not in shown and "AKIAEXAMPLEKEY" not in shown and "http://127.0.0.1:1" in shown


def test_subclassing_adds_keys_for_other_jobs():
    @dataclasses.dataclass
    class NightlyConfig(TranscribeConfig):
        report_dir: str = opt("reports", "where reports go")
        max_wer: float = opt(0.3, "gate")

    cfg = load_config(NightlyConfig, None, ["manifest=m", "output=o", "max_wer=0.25"])
    assert isinstance(cfg, PipelineConfig) and cfg.max_wer == 0.25 and cfg.report_dir == "reports"
    with pytest.raises(ConfigError, match="max_wer: expected float"):
        load_config(NightlyConfig, None, ["manifest=m", "output=o", "max_wer=high"])


@pytest.mark.parametrize("job", ["transcribe_corpus", "label_archive"])
def test_job_help_explains_every_option(job):
    out = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cls = TranscribeConfig if job == "transcribe_corpus" else LabelConfig
    keys = [f.name for f in dataclasses.fields(cls) if f.init]
    keys += [f"inference.{f.name}" for f in dataclasses.fields(InferenceConfig)]
    keys += [f"decode.{f.name}" for f in dataclasses.fields(DecodeConfig)]
    for key in keys:
        assert f"  {key} (" in out.stdout or f"  {key}.*" in out.stdout, key
    bad = subprocess.run([sys.executable, f"jobs/{job}.py", "--set", "nope=1"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown config key(s): nope" in bad.stderr
