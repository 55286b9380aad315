"""Registry round trip: save, load, list, promote, resolve; refusal to overwrite or load junk."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pytest

from models.dataset import race_set_from_frame
from models.online import OnlineResidualModel
from models.registry import (
    PROMOTED_FILE,
    list_versions,
    load_version,
    new_version_name,
    promote,
    promoted_version,
    resolve_model_dir,
    save_version,
)
from models.synthetic import synthetic_training_frame
from models.training import train_two_stage


@pytest.fixture(scope="module")
def trained_model():
    frame = synthetic_training_frame({"a": 0.5, "b": -0.2}, n_races=1500, seed=3)
    data = race_set_from_frame(frame, ("a", "b"))
    return train_two_stage(data, date(2016, 12, 31), date(2017, 4, 30), with_online=False).model


def test_round_trip_is_exact(tmp_path, trained_model) -> None:
    online = OnlineResidualModel(("a", "b", "log_f", "log_pi"), weights={"a": 0.125})
    metadata = {"metrics": {"validation": {"delta_r2": 0.01}}, "data_window": {}}
    path = save_version(tmp_path / "v1", trained_model, online, metadata)
    loaded = load_version(path)
    assert loaded.version == "v1"
    assert loaded.metadata["metrics"] == metadata["metrics"]
    assert loaded.model.feature_names == trained_model.feature_names
    for name in ("fundamental_weights", "combination_weights"):
        np.testing.assert_array_equal(getattr(loaded.model, name), getattr(trained_model, name))
    np.testing.assert_array_equal(loaded.model.design.knots, trained_model.design.knots)
    np.testing.assert_array_equal(
        loaded.model.design.outputs.scale, trained_model.design.outputs.scale
    )
    for name in (
        "alpha",
        "beta",
        "market_beta",
        "fundamental_l2",
        "combination_l2",
        "combination_source",
    ):
        assert getattr(loaded.model, name) == getattr(trained_model, name)
    assert loaded.online is not None and loaded.online.weights["a"] == 0.125
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "model.onnx", "params.json"]


def test_refuses_to_overwrite_a_version(tmp_path, trained_model) -> None:
    save_version(tmp_path / "v1", trained_model, None, {})
    with pytest.raises(FileExistsError):
        save_version(tmp_path / "v1", trained_model, None, {})
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # no staging directory left behind


def test_list_promote_and_resolve(tmp_path, trained_model) -> None:
    assert list_versions(tmp_path) == []
    for name in ("20240101T000000Z-aaaa", "20250101T000000Z-bbbb"):
        save_version(
            tmp_path / name,
            trained_model,
            None,
            {"created_at": name, "data_window": {"train_until": "2017-12-31"}},
        )
    assert promoted_version(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no promoted model"):
        resolve_model_dir(None, tmp_path)
    promote(tmp_path, "20240101T000000Z-aaaa")
    assert (tmp_path / PROMOTED_FILE).read_text().strip() == "20240101T000000Z-aaaa"
    listed = list_versions(tmp_path)
    assert [v["version"] for v in listed] == ["20240101T000000Z-aaaa", "20250101T000000Z-bbbb"]
    assert [v["promoted"] for v in listed] == [True, False]
    assert resolve_model_dir(None, tmp_path) == tmp_path / "20240101T000000Z-aaaa"
    latest = tmp_path / "20250101T000000Z-bbbb"
    assert resolve_model_dir("20250101T000000Z-bbbb", tmp_path) == latest
    assert resolve_model_dir(tmp_path / "20250101T000000Z-bbbb", tmp_path).name.endswith("bbbb")
    with pytest.raises(FileNotFoundError):
        promote(tmp_path, "no-such-version")
    assert promoted_version(tmp_path) == "20240101T000000Z-aaaa"


def test_malformed_version_is_a_clear_error(tmp_path, trained_model) -> None:
    path = save_version(tmp_path / "v1", trained_model, None, {})
    (path / "params.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        load_version(path)
    (path / "params.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"params\.json is missing"):
        load_version(path)


def test_version_names_sort_by_creation_time() -> None:
    early = new_version_name("abcdef0123", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_version_name("0000000000", datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early == "20250102T030405Z-abcdef01"
    assert early < late
