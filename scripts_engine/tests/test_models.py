"""The Script model: code is compiled when saved; a syntax error or a refusal is a field error on code."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from scripts_engine.models import Script


def test_a_script_that_compiles_is_saved(project):
    script = Script.objects.create(project=project, name="double", code="p1 = p1 * 2")
    assert Script.objects.get(pk=script.pk).code == "p1 = p1 * 2"


def test_a_syntax_error_is_refused_at_save_time_with_line_and_column(project):
    with pytest.raises(ValidationError) as caught:
        Script.objects.create(project=project, name="broken", code="x = 1\ny = (2,\n")
    message = caught.value.message_dict["code"][0]
    assert message.startswith("line 2, column 5: SyntaxError:")
    assert not Script.objects.filter(name="broken").exists()


def test_full_clean_shows_a_refusal_as_an_error_on_the_code_field(project):
    script = Script(project=project, name="escape", code="import os\n")
    with pytest.raises(ValidationError) as caught:
        script.full_clean()
    assert list(caught.value.message_dict) == ["code"]
    assert "line 1, column 1: refused: import of 'os'" in caught.value.message_dict["code"][0]
