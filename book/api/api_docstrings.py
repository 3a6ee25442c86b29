"""Sphinx extension for the book's API reference (book/api/): how autodoc renders the docstrings.

- An equation label in a docstring, written ``eq-forward-marginal`` (it reads the same in
  ``help()`` and in an editor), is followed in the book by the equation's number, a link to it
  (Sphinx's ``:eq:`` role), so the reference leads back to the page that derives the formula. A
  label that no page defines makes Sphinx warn "equation not found", which fails the build (-W);
  tests/test_api_docs.py checks the same without building.
- A dataclass field with a ``default_factory`` has the default ``<factory>`` in its signature,
  which Sphinx cannot parse (it then prints the raw annotations); it is shown as ``...``.
- A NamedTuple's fields, whose only docstring is "Alias for field number k", are left out: the
  class docstring describes them.
"""

from __future__ import annotations

import re

LABEL = re.compile(r"``(eq-[a-z0-9]+(?:-[a-z0-9]+)*)``")
NAMEDTUPLE_FIELD = re.compile(r"Alias for field number \d+")


def link_labels(app, what, name, obj, options, lines: list[str]) -> None:
    """``eq-x`` → ``eq-x`` :eq:`eq-x` in every docstring autodoc renders (modules included)."""
    lines[:] = [LABEL.sub(r"``\1`` :eq:`\1`", line) for line in lines]


def parseable_signature(app, what, name, obj, options, signature, return_annotation):
    """Show a dataclass field's ``default_factory`` default as ``...``."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Skip the fields of a NamedTuple, whose only docstring is "Alias for field number k"."""
    if NAMEDTUPLE_FIELD.fullmatch((getattr(obj, "__doc__", None) or "").strip()):
        return True
    return None


def setup(app):
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-docstring", link_labels)
    app.connect("autodoc-process-signature", parseable_signature)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
