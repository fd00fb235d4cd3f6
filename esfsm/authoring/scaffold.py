"""Scaffold a new aggregate: a small commented definition and its scenario file.

The two files are a starting point that already works: ``esfsm validate``
finds nothing in them and ``esfsm test`` passes every scenario as written.
:func:`plan` checks them, together with the definitions already in the target
folder, before anything is written, so a name whose NATS defaults clash with an
existing aggregate is refused rather than left broken on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from esfsm.checks import SCHEMA_DIR, check_documents
from esfsm.findings import Finding
from esfsm.loader import Document, discover, kind_of, load_file, load_text
from esfsm.values import AGGREGATE_NAME

MAX_NAME = 64

DEFINITION = """\
# yaml-language-server: $schema=__SCHEMAS__/aggregate.schema.json
# A starting point made by `esfsm init __NAME__`. The language is in docs/dsl.md;
# check with `esfsm validate`, run the examples in __NAME__.scenarios.yaml with `esfsm test`.
aggregate: __NAME__
description: TODO say in one sentence what a __NAME__ is.
# nats: omitted, so the defaults apply: __NAME__.cmds, __NAME__.events, __UPPER___EVENTS, AGG___NAME__.
initial: none
states:
  none: {description: Not created yet.}
  active: {description: Created; it can be renamed.}
  archived: {description: Archived for good; no command is accepted any more., final: true}
data:                                  # JSON Schema of the entity's data, checked after every command
  type: object
  properties:
    title: {type: string}
    renames: {type: integer, minimum: 0}
initial_data: {renames: 0}
# authorize:                           # rules every command must pass first (else 403)
#   - rule: "'x-username' in meta"     # meta holds the request headers
#     message: the x-username header is required
commands:
  create:
    description: Create the __NAME__ with a title.
    schema:                            # the payload, else 400
      type: object
      required: [title]
      properties:
        title: {type: string, minLength: 1, maxLength: 100}
      additionalProperties: false
    rules:                             # CEL; the first false rule rejects the command (422)
      - rule: "!cmd.title.startsWith(' ') && !cmd.title.endsWith(' ')"
        message: the title must not start or end with a space
    emit:
      - event: __NAME___created
        data: {title: cmd.title}       # every string is a CEL expression
  rename:
    description: Give the __NAME__ another title.
    schema:
      type: object
      required: [title]
      properties:
        title: {type: string, minLength: 1, maxLength: 100}
      additionalProperties: false
    rules:
      - rule: cmd.title != data.title  # data is the entity's data before the command
        message: the title is unchanged
        code: 409
    emit:
      - event: __NAME___renamed
        data: {title: cmd.title}
  archive:
    description: Archive the __NAME__; it accepts no command afterwards.
    emit: [{event: __NAME___archived}]
events:
  __NAME___created:
    schema: {type: object, required: [title], properties: {title: {type: string}}}
    from: none
    to: active
    apply: {title: event.title}        # how the event changes the data
  __NAME___renamed:
    schema: {type: object, required: [title], properties: {title: {type: string}}}
    from: active                       # no `to`: stays active
    apply: {title: event.title, renames: data.renames + 1}
  __NAME___archived: {from: active, to: archived}
"""

SCENARIOS = """\
# yaml-language-server: $schema=__SCHEMAS__/scenarios.schema.json
# Behaviour examples for __NAME__.yaml: given some history, when a command arrives,
# then these events or this rejection. Run them with `esfsm test`.
aggregate: __NAME__
key: __KEY__
scenarios:
  - name: a __NAME__ is created with its title
    when: {command: create, data: {title: First}}
    then:
      events:
        - type: __NAME___created
          data: {title: First}
      state: active
      data: {title: First, renames: 0}
      version: 1

  - name: a __NAME__ needs a title
    when: {command: create, data: {}}
    then:
      rejected: {code: 400, message: "'title' is a required property"}
      state: none
      version: 0

  - name: a title with a leading space is refused
    when: {command: create, data: {title: " First"}}
    then:
      rejected: {code: 422, message: must not start or end with a space}
      state: none

  - name: renaming changes the title and counts the renames
    given:
      - command: create
        data: {title: First}
    when: {command: rename, data: {title: Second}}
    then:
      events: [{type: __NAME___renamed, data: {title: Second}}]
      data: {title: Second, renames: 1}
      version: 2

  - name: renaming to the same title is refused
    given:
      - event: __NAME___created        # recorded as is, without a command
        data: {title: First}
    when: {command: rename, data: {title: First}}
    then:
      rejected: {code: 409, message: the title is unchanged}
      version: 1

  - name: an archived __NAME__ accepts no command
    given:
      - command: create
        data: {title: First}
      - command: archive
    when: {command: rename, data: {title: Second}}
    then:
      rejected: {code: 409, message: "not accepted in state 'archived'"}
      state: archived
"""


@dataclass(frozen=True)
class Scaffold:
    """The files `esfsm init` would write, and what checking them with their neighbours found."""

    definition: Path
    scenarios: Path
    texts: dict[Path, str]
    findings: list[Finding]


def name_problem(name: str) -> str | None:
    """Why name cannot be an aggregate name, or None if it can."""
    if not AGGREGATE_NAME.fullmatch(name):
        return (
            f"{name!r} is not a valid aggregate name: expected lowercase letters, digits and '_', "
            "starting with a letter, such as 'shop_order'"
        )
    if len(name) > MAX_NAME:
        return f"{name!r} is not a valid aggregate name: at most {MAX_NAME} characters"
    if name in ("true", "false", "null"):  # YAML reads them as a boolean or nothing, never as a name
        return (
            f"{name!r} is not a valid aggregate name: YAML reads it as {'nothing' if name == 'null' else 'a boolean'}"
        )
    return None


def file_paths(name: str, folder: Path) -> tuple[Path, Path]:
    """The definition and the scenario file `esfsm init name` writes in folder."""
    return folder / f"{name}.yaml", folder / f"{name}.scenarios.yaml"


def plan(name: str, folder: Path) -> Scaffold:
    """The two files for aggregate name in folder, checked with the definitions already there.

    ``findings`` holds only what the new files add: a clash with an existing
    aggregate's name or NATS names, never the existing files' own problems.
    """
    definition, scenarios = file_paths(name, folder)
    fill = {
        "__NAME__": name,
        "__UPPER__": name.upper(),
        "__KEY__": f"{name}-1",
        "__SCHEMAS__": schemas_reference(folder),
    }
    texts = {definition: _fill(DEFINITION, fill), scenarios: _fill(SCENARIOS, fill)}
    existing = _definitions(folder)
    new: list[Document] = []
    for path, text in texts.items():
        doc, problems = load_text(text, str(path))
        assert doc is not None and not problems, problems  # the templates are valid YAML
        new.append(doc)
    before = set(check_documents(existing).findings)
    after = check_documents(existing + new).findings
    return Scaffold(definition, scenarios, texts, [f for f in after if f not in before])


def _definitions(folder: Path) -> list[Document]:
    """The readable definitions under folder (scenario files are not needed to find a clash)."""
    if not folder.is_dir():
        return []
    paths = [p for p in discover([folder]) if kind_of(p) == "definition"]
    return [doc for doc in (load_file(p)[0] for p in paths) if doc is not None]


def _fill(template: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def schemas_reference(folder: Path) -> str:
    """The schemas folder as editors should find it from folder: the project's own
    ``schemas/`` in folder or above it, else esfsm's; relative when possible."""
    start = folder.resolve()
    for candidate in (start, *start.parents):
        if (candidate / "schemas" / "aggregate.schema.json").is_file():
            target = candidate / "schemas"
            break
    else:
        target = SCHEMA_DIR
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:  # another drive on Windows
        return target.as_uri()
