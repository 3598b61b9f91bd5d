"""Every command in README.md and docs/*.md works as printed, checked without running anything
heavy: train.py commands parse (with --print_config), sample.py's, import_biggan.py's and each
benchmark's options parse against their parsers, make targets exist (`make -n`), Python
snippets compile, and every linked file, anchor and repository path exists."""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from biggan_smyrf.cli import main as train_main
from biggan_smyrf.inference.biggan_pytorch import build_parser as import_parser
from biggan_smyrf.inference.cli import build_parser as sample_parser
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = {".venv/bin/python", "python", "python3"}
# Programs of other projects, named only: their own documentation is theirs.
OTHERS = {".venv/bin/tensorboard", "tensorboard", "torchrun", "srun"}
REPO_PATH = re.compile(r"^(?:configs|benchmarks|biggan_smyrf|tests|docs)/[\w./-]*$")


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def commands(page: Path) -> list[list[str]]:
    """The shell commands of a page's bash blocks: continuations joined, comments dropped."""
    out = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.match(r"^\w+=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words:
                out.append(words)
    return out


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{page.name}: {' '.join(words)}", words) for page in PAGES for words in commands(page)]


def check_python(args: list[str]) -> None:
    if args[:2] == ["-m", "pip"]:
        return
    if args[0] == "-m":
        parses(importlib.import_module(args[1]).build_parser(), args[2:])
    elif args[0] == "train.py":
        check_train(args[1:])
    elif args[0] == "sample.py":
        parses(sample_parser(), args[1:])
    elif args[0] == "import_biggan.py":
        parses(import_parser(), args[1:])
    else:
        pytest.fail(f"no check for python {args[0]}")


def parses(parser, args: list[str]) -> None:
    """The options parse (a command that asks for --help gets it)."""
    if "--help" in args:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit:
            parser.parse_args(args)
        assert exit.value.code == 0
    else:
        parser.parse_args(args)


def check_train(args: list[str]) -> None:
    """The command's options parse and resolve: --print_config (or its own --help) exits 0."""
    if "--help" not in args:
        args = [*args, "--print_config"]
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit:
        train_main(args)
    assert exit.value.code in (0, None), exit.value.code


@pytest.mark.parametrize("where,words", all_commands(), ids=[c[0][:90] for c in all_commands()])
def test_command_works_as_printed(where, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    program, args = words[0], words[1:]
    if program == "make":
        proc = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    elif program in PYTHONS:
        monkeypatch.setattr(sys, "argv", [program])  # LightningCLI reads sys.argv when given args too
        check_python(args)
    else:
        assert program in OTHERS, f"{where}: no check for {program}"


def test_the_pages_have_commands():
    assert len(all_commands()) >= 30
    assert commands(ROOT / "README.md")[:2] == [["make", "demo"], ["make", "test"]]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_snippets_compile(page):
    for block in blocks(page, "python"):
        compile(block, str(page), "exec")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    titles = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_and_paths_exist(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: link to {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"
    for path in re.findall(r"`([^`\s]+)`", text):
        if REPO_PATH.match(path):
            assert (ROOT / path).exists(), f"{page.name}: {path}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, page.name
