"""scripts/protocol_gates.py: the issue-14 gates read from an evaluation's metrics.json."""

import json
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import protocol_gates  # noqa: E402

from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS  # noqa: E402


def _metrics(w1=3.0, w1_floor=2.0, sharpness=0.7, fd=30.0, agreement=0.97, diversity=0.40, real_diversity=0.37,
             copies=0):
    groups = protocol_gates.GROUPS
    return {
        "config": {"prompts": [GROUP_PROMPTS[g] for g in groups]},
        "fidelity": {g: {"histogram_w1": w1, "sharpness_ratio": sharpness,
                         "real_vs_real": {"histogram_w1": w1_floor, "sharpness_ratio": 1.0}} for g in groups},
        "distribution": {"classifier": {f"group: {g}": {"generated_vs_real": {"fd": fd}, "real_vs_real": {"fd": 9.0}}
                                        for g in groups}},
        "conditioning": {"per_prompt": {GROUP_PROMPTS[g]: {"agreement": agreement} for g in groups}},
        "diversity_ms_ssim": {**{f"generated: {g}": {"mean": diversity} for g in groups},
                              **{f"real: {g}": {"mean": real_diversity} for g in groups}},
        "memorization": {"generated_vs_train": {"near_copies": copies}},
    }


def _verdicts(rows, group="adult pneumonia"):
    return {r["gate"]: r["pass"] for r in rows if r["group"] in (group, "all")}


def test_every_gate_passes_just_inside_and_fails_just_outside():
    assert all(_verdicts(protocol_gates.generation_gates(_metrics())).values())
    failing = _metrics(w1=4.1, sharpness=0.59, fd=40.5, agreement=0.94, diversity=0.43, copies=1)
    assert not any(_verdicts(protocol_gates.generation_gates(failing)).values())


def test_missing_measures_are_not_measured_rather_than_failed():
    metrics = _metrics()
    del metrics["distribution"]["classifier"], metrics["diversity_ms_ssim"]["real: adult normal"]
    verdicts = _verdicts(protocol_gates.generation_gates(metrics), "adult normal")
    assert verdicts["classifier FD"] is None and verdicts["MS-SSIM diversity"] is None
    assert verdicts["histogram W1"] is True


def test_cli_prints_the_table_writes_json_and_reads_vae_metrics(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    (tmp_path / "vae.json").write_text(json.dumps({"psnr": 30.4, "ssim": 0.84, "sharpness_ratio": 0.75,
                                                   "per_source": {"jsrt": {"psnr": 29.0, "ssim": 0.9,
                                                                           "sharpness_ratio": 0.8}}}))
    assert protocol_gates.main([str(tmp_path / "metrics.json"), "--vae-metrics", str(tmp_path / "vae.json"),
                                "--json", str(tmp_path / "gates.json")]) == 0
    assert "classifier FD" in capsys.readouterr().out
    rows = {(r["gate"], r["group"]): r["pass"] for r in json.loads((tmp_path / "gates.json").read_text())}
    assert rows[("VAE psnr", "all")] and not rows[("VAE ssim", "all")] and not rows[("VAE psnr", "jsrt")]
    with pytest.raises(SystemExit):
        protocol_gates.main([str(tmp_path / "missing.json")])


def test_curve_projects_hours_to_each_gate(tmp_path):
    import protocol_curve

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(_metrics(w1=10.0, sharpness=0.2, fd=100.0, agreement=0.90)))
    second.write_text(json.dumps(_metrics(w1=8.0, sharpness=0.3, fd=120.0, agreement=0.97)))
    assert protocol_curve.main(["--point", f"1={first}", "--point", f"2={second}", "-o", str(tmp_path / "c")]) == 0
    entries = {(e["gate"], e["group"]): e for e in json.loads((tmp_path / "c" / "curve.json").read_text())}
    w1 = entries[("histogram W1", "adult normal")]
    assert w1["values"] == [[1.0, 10.0], [2.0, 8.0]] and w1["target_value"] == 4.0
    assert w1["projected_hours"] == pytest.approx(4.0)  # 2 grey levels per hour, 4 to go
    assert entries[("sharpness ratio", "adult normal")]["projected_hours"] == pytest.approx(5.0)
    fd = entries[("classifier FD", "adult normal")]
    assert fd["projected_hours"] is None and "moving away" in fd["projection"]
    assert entries[("prompt agreement", "adult normal")]["projection"] == "met"
    assert (tmp_path / "c" / "curve.png").is_file()
    with pytest.raises(SystemExit):
        protocol_curve.main(["--point", f"soon={first}", "-o", str(tmp_path / "d")])
