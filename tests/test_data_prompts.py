"""Prompts (cxr_diffusers.data.prompts), the shared finding vocabulary (vocabulary) and report cleaning (reports)."""

import pytest

from cxr_diffusers.data import FINDINGS, NO_FINDING, PromptBuilder, build_prompt, clean_report, normalize_finding
from cxr_diffusers.data.covid import parse_covid_finding
from cxr_diffusers.data.nih import NIH_FINDINGS
from cxr_diffusers.data.prompts import normalize_findings, prompt_from_example


def test_vocabulary_is_lower_case_and_unique():
    assert len(set(FINDINGS)) == len(FINDINGS)
    assert all(f == f.lower().strip() for f in FINDINGS)


def test_nih_findings_map_onto_the_vocabulary():
    mapped = {normalize_finding(name) for name in NIH_FINDINGS}
    assert None not in mapped and len(mapped) == 14
    assert normalize_finding("Effusion") == "pleural effusion"
    assert normalize_finding("Pleural_Thickening") == "pleural thickening"
    assert normalize_finding("Edema") == "pulmonary edema"
    assert normalize_finding("No Finding") is None


def test_openi_terms_and_mesh_qualifiers():
    assert normalize_finding("Pulmonary Atelectasis") == "atelectasis"
    assert normalize_finding("Cardiomegaly/borderline") == "cardiomegaly"
    assert normalize_finding("Lung/hypoinflation/mild") == "hypoinflation"
    assert normalize_finding("Opacity/lung/apex/left/irregular") == "opacity"
    assert normalize_finding("Lung/hilum") is None  # anatomy without a finding
    assert normalize_finding("normal") is None
    assert normalize_findings(["Cardiomegaly", "Cardiomegaly/mild", "normal", "Opacity"]) == ["cardiomegaly", "opacity"]


def test_covid_findings():
    assert parse_covid_finding("COVID-19") == (["pneumonia", "covid-19"], "viral", "COVID-19")
    assert parse_covid_finding("Streptococcus") == (["pneumonia"], "bacterial", "Streptococcus")
    assert parse_covid_finding("Pneumonia/Fungal/Pneumocystis") == (["pneumonia"], "fungal", "Pneumocystis")
    assert parse_covid_finding("COVID-19, ARDS")[0] == ["pneumonia", "covid-19", "ards"]
    assert parse_covid_finding("No Finding") == ([], "", "")
    assert parse_covid_finding("todo") == ([], "", "")


def test_build_prompt_from_labels_and_metadata():
    assert (
        build_prompt(["cardiomegaly", "pleural effusion"], view="PA", age=58, sex="female")
        == "PA chest radiograph of a 58 year old female. Findings: cardiomegaly, pleural effusion."
    )
    assert (
        build_prompt([], view="AP", age=80, sex="male") == f"AP chest radiograph of an 80 year old male. {NO_FINDING}"
    )
    assert build_prompt(["pneumonia"], subtype="bacterial", population="pediatric") == (
        "Pediatric chest radiograph. Findings: bacterial pneumonia."
    )
    assert build_prompt(["pneumonia", "covid-19"], population="adult") == (
        "Chest radiograph of an adult. Findings: COVID-19 pneumonia."
    )
    assert build_prompt([], sex="female") == f"Chest radiograph of a female patient. {NO_FINDING}"


def test_report_text_replaces_labels_and_notes_follow_them():
    prompt = build_prompt([], view="frontal", text="Impression: Clear lungs.")
    assert prompt == "Frontal chest radiograph. Impression: Clear lungs."
    prompt = build_prompt(["pneumonia"], view="PA", text="Fever for 3 days.")
    assert prompt == "PA chest radiograph. Findings: pneumonia. Fever for 3 days."
    long = build_prompt([], text="First sentence here. " * 40, max_chars=80)
    assert len(long) <= 80 and long.endswith(".")


def test_clean_report_removes_anonymisation_tokens():
    assert clean_report("Normal chest x-XXXX.") == "Normal chest x-ray."
    assert clean_report("Borderline cardiomegaly. Midline sternotomy XXXX. Inferior XXXX XXXX XXXX.") == (
        "Borderline cardiomegaly. Midline sternotomy."
    )
    assert clean_report("There are no XXXX of a pleural effusion.") == "There is no evidence of a pleural effusion."
    assert clean_report("Lungs are clear. The XXXX are intact. Calcified hilar lymph XXXX.") == (
        "Lungs are clear. Calcified hilar lymph nodes."
    )
    assert clean_report("1. No acute disease. 2. Cardiomegaly.") == "No acute disease. Cardiomegaly."
    for empty in (None, float("nan"), "", "None.", "XXXX-year-old XXXX with XXXX."):
        assert clean_report(empty) == ""
    assert "XXXX" not in clean_report("XXXX opacity in the left midlung XXXX.")


def test_prompt_from_example_uses_report_columns():
    example = {"labels": ["cardiomegaly"], "view": "frontal", "source": "indiana",
               "impression": "Borderline cardiomegaly XXXX.", "findings": ""}  # fmt: skip
    assert prompt_from_example(example) == "Frontal chest radiograph. Impression: Borderline cardiomegaly."
    example = {"labels": ["pneumonia"], "source": "kermany", "subtype": "viral"}
    assert prompt_from_example(example) == "Pediatric chest radiograph. Findings: viral pneumonia."


def test_training_prompts_are_seeded_and_varied():
    example = {"labels": ["cardiomegaly", "pleural effusion"], "view": "PA", "age": 58, "sex": "female",
               "source": "nih"}  # fmt: skip
    first = [PromptBuilder(training=True, seed=3)(example) for _ in range(1)]
    builder_a, builder_b = PromptBuilder(training=True, seed=3), PromptBuilder(training=True, seed=3)
    run_a = [builder_a(example) for _ in range(30)]
    run_b = [builder_b(example) for _ in range(30)]
    assert run_a == run_b and run_a[0] == first[0]  # same seed, same stream
    assert len(set(run_a)) > 10  # wording varies
    assert any("58" not in p for p in run_a)  # age dropped sometimes
    assert any("PA" not in p and "posteroanterior" not in p for p in run_a)  # view dropped sometimes
    assert all(
        "cardiomegaly" in p.lower() for p in run_a if "effusion" in p
    )  # findings dropped together, never mangled
    other = [PromptBuilder(training=True, seed=4)(example) for _ in range(1)]
    assert PromptBuilder()(example) == build_prompt(
        ["cardiomegaly", "pleural effusion"], view="PA", age=58, sex="female"
    )
    builder_a.reseed(3)
    assert builder_a(example) == run_a[0]
    assert isinstance(other[0], str)


def test_vocabulary_and_report_cleaning_keep_their_old_import_path():
    from cxr_diffusers.data import prompts, reports, vocabulary

    assert prompts.FINDINGS is vocabulary.FINDINGS and prompts.clean_report is reports.clean_report
    assert prompts.ADULT_SOURCES is vocabulary.ADULT_SOURCES and prompts.normalize_finding is normalize_finding
    assert [vocabulary.source_population(s) for s in ("kermany", "jsrt", "nih")] == ["pediatric", "adult", ""]


def test_loader_prompts_read_the_population_from_the_source():
    import pandas as pd

    from cxr_diffusers.data._assemble import row_prompts

    frame = pd.DataFrame({"labels": [["pneumonia"], []], "source": ["kermany", "jsrt"], "view": ["", "PA"],
                          "subtype": ["viral", ""], "clinical_notes": ["Fever for 3 days.", ""],
                          "age": [None, None]})  # fmt: skip
    assert row_prompts(frame) == [
        build_prompt(["pneumonia"], subtype="viral", population="pediatric"),
        build_prompt([], view="PA", population="adult"),
    ]
    with_notes = row_prompts(frame, text_columns=["clinical_notes"])
    assert with_notes[0] == "Pediatric chest radiograph. Findings: viral pneumonia. Fever for 3 days."


def test_training_mode_can_emit_empty_prompts():
    builder = PromptBuilder(training=True, seed=0, p_empty=1.0)
    assert builder({"labels": []}) == ""


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("Pediatric chest radiograph. Findings: pneumonia.", "PNEUMONIA"),
        ("PA chest radiograph. Findings: right lower lobe Pneumonia.", "PNEUMONIA"),
        ("Chest radiograph. Resolved pneumonia.", "NORMAL"),
        ("Chest radiograph. No evidence of pneumonia.", "NORMAL"),
        ("Chest radiograph. Negative for pneumonia.", "NORMAL"),
        ("Pediatric chest radiograph. No acute cardiopulmonary abnormality.", "NORMAL"),
        ("Findings: cardiomegaly.", None),
        ("", None),
    ],
)
def test_training_and_evaluation_read_a_prompt_the_same_way(prompt, expected):
    """Before: label_from_prompt read "resolved pneumonia" as NORMAL and expected_class as PNEUMONIA."""
    from cxr_diffusers.classification import label_from_prompt
    from cxr_diffusers.data.prompts import pneumonia_class_from_prompt
    from cxr_diffusers.evaluation.conditioning import expected_class

    assert pneumonia_class_from_prompt(prompt) == expected
    assert label_from_prompt(prompt) == {"PNEUMONIA": 1, "NORMAL": 0, None: None}[expected]
    assert expected_class(prompt) == (expected or "NORMAL")
