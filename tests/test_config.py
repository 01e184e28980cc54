"""Job configs fail before any work starts, naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmexpr.cli import main
from mmexpr.config import ConfigError, flatten, job_from_dict, load_job

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_job_file_in_jobs_folder_validates() -> None:
    files = sorted((REPO / "jobs").glob("*.yaml"))
    assert files, "jobs/ holds no job files"
    for path in files:
        job = load_job(path)
        assert job.name


def test_unknown_key_is_named_with_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  fusoin: bi\n")
    with pytest.raises(ConfigError) as err:
        load_job(path)
    text = str(err.value)
    assert str(path) in text
    assert "model.fusoin: unknown key" in text
    assert "fusion" in text  # what is allowed


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: lots\n")
    with pytest.raises(ConfigError) as err:
        load_job(path)
    assert "train.max_steps" in str(err.value)
    assert "'lots'" in str(err.value)


def test_bad_enum_lists_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  fusion: sideways\n")
    with pytest.raises(ConfigError) as err:
        load_job(path)
    text = str(err.value)
    assert "model.fusion" in text and "'bi'" in text and "'concat'" in text


def test_out_of_range_value_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.zero_stage"):
        load_job(write(tmp_path, "train:\n  zero_stage: 4\n"))


def test_missing_file_and_bad_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")
    bad = write(tmp_path, "model:\n  fusion: [bi\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ not valid YAML"):
        load_job(bad)
    top = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_job(top)


def test_dotted_overrides_apply_with_yaml_types(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  fusion: bi\n")
    job = load_job(path, ["model.fusion=concat", "train.lr=0.5", "train.use_gpu=true", "model.prompts=['a {}']"])
    assert job.model.fusion == "concat"
    assert job.train.lr == 0.5
    assert job.train.use_gpu is True
    assert job.model.prompts == ["a {}"]
    assert job.name == "job"


def test_bad_override_names_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_job(path, ["model.fusion"])
    with pytest.raises(ConfigError, match=r"(?s)--set model.nope=1.*model.nope: unknown key"):
        load_job(path, ["model.nope=1"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_job(path, ["name.x=1"])


def test_cross_field_check_runs_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="divisible"):
        load_job(write(tmp_path, "model:\n  hidden: 30\n  fusion_heads: 4\n"))


def test_a_log_mel_audio_encoder_that_would_stay_random_is_refused_with_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  preset: tiny\n  audio: {name: tiny-logmel-stats}\n")
    with pytest.raises(ConfigError, match=r"model\.audio\.train: 'frozen'.*no pretrained weights.*expected full"):
        load_job(path)
    assert load_job(path, ["model.audio.train=full"]).model.audio.train == "full"
    # the same name under a real preset is a Hugging Face id, not the log-mel encoder
    assert load_job(path, ["model.preset=pretrained"]).model.audio.train == "frozen"


def test_a_unimodal_loss_weight_without_both_modalities_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  unimodal_weight: 0.5\n")
    assert load_job(path).model.unimodal_weight == 0.5
    with pytest.raises(ConfigError, match=r"model\.unimodal_weight: 0\.5 needs both modalities.*'video'"):
        load_job(path, ["model.modalities=video"])


def test_resolved_config_round_trips_through_its_file(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "train:\n  lr: 0.002\n"), ["model.temporal=none"])
    written = job.write(tmp_path / "out" / "config.yaml")
    again = load_job(written)
    assert again == job
    assert job_from_dict(job.to_dict()) == job
    flat = flatten(job.to_dict())
    assert flat["train.lr"] == 0.002 and flat["model.temporal"] == "none"


def test_cli_reports_config_error_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, "data:\n  windw: 8\n")
    code = main(["config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.windw: unknown key" in err
    assert "Traceback" not in err
