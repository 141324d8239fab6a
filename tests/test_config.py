"""ShareConfig: frozen, validated, JSON round-trip."""

from __future__ import annotations

import dataclasses

import pytest

from sharedft_fx import ShareConfig


def test_round_trip_and_equality() -> None:
    cfg = ShareConfig(rank="auto", link="lowrank+scale", exclude=["fc*"],
                      concrete_args={"flag": True})
    again = ShareConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)
    assert again.exclude == ("fc*",)
    assert ShareConfig.from_dict(cfg.to_dict()) == cfg


def test_frozen_and_replace_validates() -> None:
    cfg = ShareConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rank = 4  # type: ignore[misc]
    assert cfg.replace(rank=4).rank == 4
    with pytest.raises(ValueError):
        cfg.replace(rank=-1)


def test_every_field_has_help() -> None:
    assert all(text for text in ShareConfig.help().values())
