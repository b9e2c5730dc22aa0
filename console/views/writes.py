"""What the console's form views share: a form's write through a service, its refusals beside the fields."""

from __future__ import annotations

from django.core.exceptions import ValidationError


def errors_into(form, exc: ValidationError) -> None:
    """A service's ValidationError (the model's rules) beside the form's fields; others above the form."""
    if hasattr(exc, "error_dict"):
        for name, errors in exc.error_dict.items():
            form.add_error(name if name in form.fields else None, errors)
    else:
        form.add_error(None, exc)


def saved(form, write):
    """``write(cleaned_data)`` (a service) when ``form`` is valid; its row, or None with the refusal (the form's or
    the service's validation) on the form, nothing saved."""
    if not form.is_valid():
        return None
    try:
        return write(form.cleaned_data)
    except ValidationError as exc:
        errors_into(form, exc)
        return None
