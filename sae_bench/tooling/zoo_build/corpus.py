"""The zoo's text: English prose and Python code that every CPython install carries, split deterministically.

Prose comes from `pydoc_data.topics` and the docstrings of the standard library; code is the standard library's
source. Documents are read in sorted path order and assigned to a split by a hash of their name, so the same Python
version gives the same corpus; `Corpus.sha256` records exactly which text was used (it changes with the Python
version, which the manifest records too).
"""

from __future__ import annotations

import ast
import hashlib
import pydoc_data.topics
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

EVAL_SHARE = 10  # one document in ten is held out from every training step
_SKIPPED_PARTS = frozenset({"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"})
_PROMPTS = (
    "What does `{name}` do?",
    "Explain `{name}` briefly.",
    "Describe the purpose of `{name}`.",
    "How would you summarise `{name}`?",
)


@dataclass(frozen=True)
class Document:
    """One named text; `name` decides its split."""

    name: str
    text: str

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % EVAL_SHARE == 0


@dataclass(frozen=True)
class InstructionPair:
    """A user turn and the assistant's answer, both plain text (the chat template is the tokenizer's)."""

    name: str
    user: str
    assistant: str

    @property
    def held_out(self) -> bool:
        return Document(self.name, "").held_out


@dataclass(frozen=True)
class Corpus:
    """All zoo text, before splitting: prose and code documents and instruction pairs."""

    prose: tuple[Document, ...]
    code: tuple[Document, ...]
    instructions: tuple[InstructionPair, ...]
    sha256: str = field(default="")

    def split(self, kind: str, *, held_out: bool) -> list:
        items = {"prose": self.prose, "code": self.code, "instructions": self.instructions}[kind]
        return [item for item in items if item.held_out == held_out]


def stdlib_sources(max_bytes: int) -> list[Path]:
    """Standard-library modules in sorted path order (tests, IDLE and demos left out), up to `max_bytes` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        size = path.stat().st_size
        if total + size > max_bytes:
            break
        chosen.append(path)
        total += size
    return chosen


def _docstrings(tree: ast.Module, module: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) for the module and every class and function in it, in source order."""
    found = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        found.append((module, module_doc))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                found.append((f"{module}.{node.name}", doc))
    return found


def _first_paragraph(text: str, limit: int) -> str:
    paragraph = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    return " ".join(paragraph.split())[:limit]


def build_corpus(*, code_bytes: int = 4_000_000) -> Corpus:
    """Read the prose, code and instruction pairs of this Python install, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    prose = [Document(f"topic:{name}", pydoc_data.topics.topics[name]) for name in sorted(pydoc_data.topics.topics)]
    code, instructions = [], []
    for name in sorted(pydoc_data.topics.topics):
        answer = _first_paragraph(pydoc_data.topics.topics[name], 600)
        if len(answer) >= 80:
            instructions.append(InstructionPair(f"topic:{name}", f"Tell me about {name} in Python.", answer))
    for path in stdlib_sources(code_bytes):
        source = path.read_text(encoding="utf-8", errors="replace")
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        code.append(Document(f"code:{module}", source))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        docs = _docstrings(tree, module)
        if docs:
            prose.append(Document(f"doc:{module}", "\n\n".join(f"{name}\n{doc}" for name, doc in docs)))
        for index, (name, doc) in enumerate(docs):
            answer = _first_paragraph(doc, 400)
            if len(answer) >= 40:
                prompt = _PROMPTS[index % len(_PROMPTS)].format(name=name)
                instructions.append(InstructionPair(f"pair:{name}", prompt, answer))
    digest = hashlib.sha256()
    for item in [*prose, *code]:
        digest.update(item.name.encode() + b"\0" + item.text.encode() + b"\0")
    for pair in instructions:
        digest.update(f"{pair.name}\0{pair.user}\0{pair.assistant}\0".encode())
    return Corpus(tuple(prose), tuple(code), tuple(instructions), digest.hexdigest())
