"""Layout answers: LayoutLLM's regex (compat) and the tolerant parser."""
from __future__ import annotations

import logging

import pytest

from t2i.layout.parse import LayoutParseError, ParsedLayout, layout_or_empty, parse_layout

ANSWER = """output:
cat: [0.1, 0.2, 0.3, 0.4]
dining table: [0.05, 0.5, 0.9, 0.45]
cell phone case: [0.6, 0.1, 0.2, 0.2]
dog: [0, 0.1, 0.5, 0.5]
teddy bear 1: [0.5, 0.5, 0.25, 0.25]"""

JSON_ANSWER = '[{"name": "red cube", "box": [0.1, 0.2, 0.3, 0.4]}, {"label": "sky", "bbox": [0, 0, 1, 0.3]}]'


def names(parsed: ParsedLayout) -> list[str]:
    return [o["name"] for o in parsed.objects]


def test_compat_matches_the_original_regex():
    parsed = parse_layout(ANSWER, "compat")
    # integers do not match (dog dropped); names keep their last two words
    assert names(parsed) == ["cat", "dining table", "phone case", "bear 1"]
    assert parsed.objects[0]["box"] == [0.1, 0.2, 0.3, 0.4]
    assert parsed.dropped == 1 and parsed.clamped == 0


def test_compat_reports_values_as_given():
    parsed = parse_layout("kite: [0.8, 0.9, 0.5, 0.5]", "compat")
    assert parsed.objects == [{"name": "kite", "box": [0.8, 0.9, 0.5, 0.5]}] and parsed.clamped == 0


def test_compat_reads_nothing_from_json(caplog):
    with caplog.at_level(logging.WARNING, logger="t2i.layout.parse"):
        parsed = parse_layout(JSON_ANSWER, "compat")
    assert parsed.objects == [] and parsed.dropped == 2
    assert "2 dropped" in caplog.text


def test_tolerant_reads_ints_and_long_names():
    parsed = parse_layout(ANSWER + "\n2. a small brown dog: (0.1, 0.1, 0.2, 0.2)", "tolerant")
    assert names(parsed) == ["cat", "dining table", "cell phone case", "dog", "teddy bear 1", "a small brown dog"]
    assert parsed.objects[3]["box"] == [0.0, 0.1, 0.5, 0.5]
    assert parsed.dropped == 0 and parsed.clamped == 0


def test_tolerant_json_forms():
    expected = [{"name": "red cube", "box": [0.1, 0.2, 0.3, 0.4]}, {"name": "sky", "box": [0.0, 0.0, 1.0, 0.3]}]
    assert parse_layout(JSON_ANSWER, "tolerant").objects == expected
    fenced = f"Here is the layout:\n```json\n{JSON_ANSWER}\n```\nEnjoy."
    assert parse_layout(fenced, "tolerant").objects == expected
    as_dict = '{"red cube": [0.1, 0.2, 0.3, 0.4], "sky": [0, 0, 1, 0.3]}'
    assert parse_layout(as_dict, "tolerant").objects == expected
    as_pairs = '[["red cube", [0.1, 0.2, 0.3, 0.4]], ["sky", [0, 0, 1, 0.3]]]'
    assert parse_layout(as_pairs, "tolerant").objects == expected
    lmd_style = "[('red cube', [0.1, 0.2, 0.3, 0.4]), ('sky', [0, 0, 1, 0.3])]"
    assert parse_layout(lmd_style, "tolerant").objects == expected


def test_tolerant_json_counts_unreadable_entries():
    parsed = parse_layout('[{"name": "cat", "box": [0.1, 0.2, 0.3, 0.4]}, {"name": "dog", "box": [0.1]}]',
                          "tolerant")
    assert names(parsed) == ["cat"] and parsed.dropped == 1


def test_tolerant_clamps_and_drops(caplog):
    text = ("kite: [0.8, 0.9, 0.5, 0.5]\nbird: [-0.1, 0.2, 0.3, 0.2]\n"
            "ghost: [0.2, 0.2, 0, 0.3]\nfar: [1.2, 0.1, 0.2, 0.2]")
    with caplog.at_level(logging.WARNING, logger="t2i.layout.parse"):
        parsed = parse_layout(text, "tolerant")
    assert names(parsed) == ["kite", "bird"]
    assert parsed.objects[0]["box"] == pytest.approx([0.8, 0.9, 0.2, 0.1])
    assert parsed.objects[1]["box"] == pytest.approx([0.0, 0.2, 0.2, 0.2])
    assert parsed.clamped == 2 and parsed.dropped == 2
    assert "2 dropped, 2 clamped" in caplog.text


def test_tolerant_counts_malformed_items():
    parsed = parse_layout("cat: [0.1, 0.2, 0.3]\ndog: [0.1, 0.2, 0.3, 0.4]", "tolerant")
    assert names(parsed) == ["dog"] and parsed.dropped == 1


def test_malformed_answer_error_or_empty(caplog):
    parsed = parse_layout("I cannot draw that, sorry.", "tolerant")
    assert parsed.objects == [] and parsed.dropped == 0
    with pytest.raises(LayoutParseError, match=r"a cat on a mat.*I cannot draw that"):
        layout_or_empty(parsed, "error", "a cat on a mat")
    with caplog.at_level(logging.WARNING, logger="t2i.layout.parse"):
        assert layout_or_empty(parsed, "empty", "a cat on a mat") == []
    assert "a cat on a mat" in caplog.text and "empty layout" in caplog.text


def test_layout_or_empty_passes_objects_and_checks_its_mode():
    parsed = parse_layout("cat: [0.1, 0.2, 0.3, 0.4]", "compat")
    assert layout_or_empty(parsed, "error", "q") == parsed.objects
    with pytest.raises(ValueError, match="on_malformed 'skip'"):
        layout_or_empty(parsed, "skip", "q")
    with pytest.raises(ValueError, match="mode 'strict'"):
        parse_layout("", "strict")
