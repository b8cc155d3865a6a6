"""`MemoryConfig`: the settings are defined, validated and persisted in one place."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest

from fmai_core import FiniteMemoryLLM, MemoryConfig
from fmai_core.errors import BudgetError, CheckpointError, ConfigurationError
from fmai_core.testing import EchoBackend


def test_the_keywords_build_the_config_the_engine_and_planner_share() -> None:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="sliding", max_tokens=300, max_new_tokens=20, low_water=0.5,
        archive_limit=50, system_prompt="Be brief.",
    )  # fmt: skip
    assert llm.config == MemoryConfig(
        max_tokens=300, max_new_tokens=20, low_water=0.5, archive_limit=50,
        system_prompt="Be brief.",
    )  # fmt: skip
    assert llm._planner.config is llm.config
    assert (llm.max_tokens, llm.max_new_tokens, llm.system_prompt) == (300, 20, "Be brief.")


def test_a_config_is_frozen_and_revalidated_by_replace() -> None:
    config = MemoryConfig(max_tokens=400, max_new_tokens=40)
    with pytest.raises(FrozenInstanceError):
        config.max_tokens = 10  # type: ignore[misc]
    with pytest.raises(ConfigurationError, match="low_water must be in"):
        replace(config, low_water=1.5)
    with pytest.raises(BudgetError, match="must be below max_tokens"):
        replace(config, max_new_tokens=400)
    assert MemoryConfig(system_prompt="").system_prompt is None


def test_config_and_keywords_together_are_refused() -> None:
    config = MemoryConfig(max_tokens=400, max_new_tokens=40)
    llm = FiniteMemoryLLM(EchoBackend(), policy="sliding", config=config)
    assert llm.config is config and llm.chat("hi").stats.prompt_tokens + 40 <= 400
    with pytest.raises(ConfigurationError, match=r"either in config= or as keywords.*max_tokens"):
        FiniteMemoryLLM(EchoBackend(), config=config, max_tokens=500)
    with pytest.raises(ConfigurationError, match="config must be a MemoryConfig"):
        FiniteMemoryLLM(EchoBackend(), config={"max_tokens": 500})  # type: ignore[arg-type]


def test_to_dict_round_trips_and_from_dict_refuses_unknown_settings() -> None:
    config = MemoryConfig(max_tokens=999, recall_fraction=0.25, archive_limit=None)
    assert MemoryConfig.from_dict(config.to_dict()) == config
    assert set(config.to_dict()) == set(MemoryConfig.names())
    with pytest.raises(ConfigurationError, match="Unknown memory settings low_watter"):
        MemoryConfig.from_dict({"low_watter": 0.5})


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    llm = FiniteMemoryLLM(
        EchoBackend(), policy="sliding", max_tokens=300, max_new_tokens=20, low_water=0.5
    )
    llm.chat("Hello there.")
    path = tmp_path / "c.json"
    llm.save(path)
    return path, json.loads(path.read_text())


def test_a_checkpoint_stores_the_config_and_overrides_are_validated(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    assert {k: doc["settings"][k] for k in MemoryConfig.names()} == MemoryConfig(
        max_tokens=300, max_new_tokens=20, low_water=0.5
    ).to_dict()
    again = FiniteMemoryLLM.load(path, EchoBackend())
    assert again.config == MemoryConfig(max_tokens=300, max_new_tokens=20, low_water=0.5)
    wider = FiniteMemoryLLM.load(path, EchoBackend(), max_tokens=600)
    assert wider.config == replace(again.config, max_tokens=600)
    with pytest.raises(ConfigurationError, match="low_water must be in"):
        FiniteMemoryLLM.load(path, EchoBackend(), low_water=2.0)
    whole = MemoryConfig(max_tokens=700, max_new_tokens=30)
    assert FiniteMemoryLLM.load(path, EchoBackend(), config=whole).config is whole


def test_an_old_checkpoint_without_recall_fraction_loads_with_the_default(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    del doc["settings"]["recall_fraction"], doc["checksum"]
    doc["version"] = 1  # written before the checksum and recall_fraction existed
    path.write_text(json.dumps(doc))
    assert FiniteMemoryLLM.load(path, EchoBackend()).config.recall_fraction is None


@pytest.mark.parametrize(
    ("setting", "value"), [("low_water", 7), ("max_new_tokens", 300), ("max_tokens", "300")]
)
def test_invalid_saved_settings_are_a_damaged_checkpoint(
    tmp_path: Path, setting: str, value: Any
) -> None:
    path, doc = _saved(tmp_path)
    doc["settings"][setting] = value
    del doc["checksum"]
    doc["version"] = 1  # no checksum: the schema check alone must catch it
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=f"damaged.*{setting}"):
        FiniteMemoryLLM.load(path, EchoBackend())
