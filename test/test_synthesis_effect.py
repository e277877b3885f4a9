"""The effect experiment at smoke-test size: the table, the verdict, the cache, and that changed settings retrain.

The numbers at this size mean nothing (a few steps of training); the full-size table is in docs/synthesis.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flow_anomaly_ros.synthesis.effect import ArmResult, EffectConfig, run_effect, verdict


def _cfg(out, **kw) -> EffectConfig:
    values = dict(size=(64, 128), train_scenes=4, test_scenes=2, base_steps=2, finetune_steps=1, maf_steps=5,
                  threads=1)  # fmt: skip
    values.update(kw)
    return EffectConfig.quick(str(out), **values)


def test_quick_effect_writes_the_table_and_reuses_its_cache(tmp_path):
    logs: list[str] = []
    report = run_effect(_cfg(tmp_path), log=logs.append)
    assert [a["arm"] for a in report["arms"]] == ["no_negatives", "noise", "maf"]
    assert set(report["verdict"]) >= {"checked", "all", "ap_beats_noise", "fpr95_beats_noise", "miou_within_2_points"}
    for arm in report["arms"]:
        for method in ("anomaly_prob", "max_softmax", "energy"):
            assert 0.0 <= arm["metrics"][method]["ap"] <= 1.0 and 0.0 <= arm["metrics"][method]["fpr95"] <= 1.0
    table = (tmp_path / "effect.md").read_text()
    assert "| (a) no negatives, max-softmax | max_softmax |" in table and "Verdict:" in table
    assert json.loads((tmp_path / "effect.json").read_text())["verdict"] == report["verdict"]
    maf = next(a for a in report["arms"] if a["arm"] == "maf")
    assert maf["sampling"]["proposed"] > 0 and 0 < maf["sampling"]["acceptance_rate"] <= 1
    # everything is cached: a rerun trains nothing and gives the same metrics
    logs.clear()
    again = run_effect(_cfg(tmp_path), log=logs.append)
    assert not [line for line in logs if "steps" in line], logs
    assert [a["metrics"] for a in again["arms"]] == [a["metrics"] for a in report["arms"]]
    # another loss weight retrains the arms with negatives, not the shared base or the baseline without negatives
    logs.clear()
    run_effect(_cfg(tmp_path, anomaly_weight=0.5, arms=("no_negatives", "noise")), log=logs.append)
    assert any("arm noise: settings changed" in line for line in logs), logs
    assert not any("base:" in line or "arm no_negatives" in line for line in logs), logs


def test_validation_scenes_differ_from_the_test_scenes(tmp_path):
    from flow_anomaly_ros.synthesis.effect import test_scenes

    test = test_scenes(_cfg(tmp_path))
    val = test_scenes(_cfg(tmp_path, eval_on="validation"))
    assert all(not (a[0] == b[0]).all() for a, b in zip(test, val))
    with pytest.raises(ValueError, match="eval_on"):
        _cfg(tmp_path, eval_on="train").validate()


def test_verdict_needs_every_criterion():
    def arm(name, ap, fpr, miou):
        method = "max_softmax" if name == "no_negatives" else "anomaly_prob"
        return ArmResult(name, method, {method: {"ap": ap, "fpr95": fpr, "auroc": 0.5}}, miou)

    good = [arm("no_negatives", 0.1, 0.9, 0.50), arm("noise", 0.2, 0.8, 0.49), arm("maf", 0.3, 0.7, 0.485)]
    assert verdict(good)["all"]
    worse_miou = [*good[:2], arm("maf", 0.3, 0.7, 0.47)]  # 3 points below no_negatives
    v = verdict(worse_miou)
    assert not v["all"] and not v["miou_within_2_points"] and v["ap_beats_noise"]
    assert not verdict([*good[:2], arm("maf", 0.15, 0.7, 0.5)])["ap_beats_noise"]


def test_test_scenes_hold_every_kind_including_the_held_out_ones(tmp_path):
    from flow_anomaly_ros.data.street_scenes import ALL_ANOMALY_KINDS, ANOMALY_KINDS, HELD_OUT_KINDS
    from flow_anomaly_ros.synthesis.effect import test_scenes

    scenes = test_scenes(_cfg(tmp_path, test_scenes=len(ALL_ANOMALY_KINDS), size=(128, 256)))
    assert [s[3] for s in scenes] == list(ALL_ANOMALY_KINDS)
    assert all(s[2].any() for s in scenes)  # every scene shows its object
    assert len(HELD_OUT_KINDS) >= 3 and not set(HELD_OUT_KINDS) & set(ANOMALY_KINDS)
    val = test_scenes(_cfg(tmp_path, test_scenes=len(ALL_ANOMALY_KINDS), eval_on="validation"))
    assert not {s[3] for s in val} & set(HELD_OUT_KINDS)  # validation never sees the held-out kinds


def test_the_low_contrast_kind_is_close_to_the_road_colour():
    from flow_anomaly_ros.data.street_scenes import ROAD, generate_scene

    scene = generate_scene(128, 256, seed=3, num_anomalies=2, anomaly_kinds=("rock",))
    road = scene.image[scene.label == ROAD].astype(float).mean(0)
    rock = scene.image[scene.anomaly_mask].astype(float).mean(0)
    assert np.abs(rock - road).max() < 25, (rock, road)


def test_seeds_give_mean_and_spread_and_per_kind_ap(tmp_path):
    report = run_effect(_cfg(tmp_path, num_seeds=2, arms=("no_negatives", "maf"), test_scenes=2), log=lambda s: None)
    assert sorted({a["seed"] for a in report["arms"]}) == [0, 1]
    rows = {(r["arm"], r["method"]): r for r in report["summary"]}
    assert {("no_negatives", "max_softmax"), ("no_negatives", "max_logit"), ("no_negatives", "energy"),
            ("maf", "densehybrid"), ("maf", "anomaly_prob")} <= set(rows)  # fmt: skip
    row = rows[("maf", "anomaly_prob")]
    assert row["ap"]["n"] == 2 and row["ap"]["std"] >= 0.0 and row["per_kind_ap"]
    assert "±" in (tmp_path / "effect.md").read_text()
