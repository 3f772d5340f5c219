"""Every `coffer ...` command line in README.md parses: its subcommands exist, every option it writes is one the
command takes (with a value where the option needs one), and it gives as many arguments as the command requires and
no more than it takes. Checked against the real binary's `--help`, which swift-argument-parser writes from the same
declarations that parse the command line.

README grammar: `[...]` optional, `A\\|B` alternatives (of subcommands: `alias set\\|rm`, or of values:
`--scope read\\|admin`, `MODEL\\|NS/`), `...` more of the same; a line holding `...` where a command path would be
(`coffer ... --registry URL`) names no command and is skipped.
"""
import functools
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import cofferlib  # noqa: E402

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
COFFER = cofferlib.coffer_binary()
WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def readme_lines():
    text = open(README).read().replace("\\|", "|")
    return sorted(set(m.group(1).strip() for m in re.finditer(r"`coffer ([^`]*)`", text)))


@functools.lru_cache(maxsize=None)
def help_of(path):
    """(subcommands, {option: takes_value}, [(argument, optional, repeated)], default subcommand) from `coffer PATH --help`."""
    result = subprocess.run([COFFER, *path, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, f"coffer {' '.join(path)} --help: {result.stderr}"
    out = result.stdout
    listed = re.findall(r"^  ([a-z][a-z0-9-]*)( \(default\))?\s", out.split("SUBCOMMANDS:")[1], re.M) if "SUBCOMMANDS:" in out else []
    subcommands = {name for name, _ in listed}
    default = next((name for name, marked in listed if marked), None)
    options = {}
    for name, value in re.findall(r"^  (?:-\w, )?(--[a-z0-9-]+)(?:, -\w)?( <[^>]+>)?", out, re.M):
        options[name] = bool(value)
    usage = re.sub(r"\s+", " ", out.split("USAGE:")[1].split("\n\n")[0]) if "USAGE:" in out else ""
    usage = re.sub(r"--[a-z0-9-]+ <[^>]+>", "", usage)  # option values are not arguments
    arguments = [(name, optional == "[", bool(dots)) for optional, name, dots in re.findall(r"(\[?)<([a-z0-9-]+)>\]?( \.\.\.)?", usage)
                 if name != "subcommand" and name != "options"]
    return subcommands, options, arguments, default


def split_top(text, separator):
    """`text` split at `separator` where no [ ] or ' ' encloses it."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "[":
            depth += 1
        elif not quoted and c == "]":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(separator, i):
            parts.append(text[start:i])
            start = i + len(separator)
    return parts + [text[start:]]


def alternatives(line):
    """The concrete command lines one README line stands for: subcommand alternatives expanded; a value alternative
    (`--scope read|admin`, `MODEL|NS/`) kept as its first choice."""
    words = split_top(line, " ")
    done, active = [], [[]]
    for word in words:
        choices = split_top(word, "|")
        if len(choices) == 1:
            for e in active:
                e.append(word)
            continue
        previous = active[0][-1] if active[0] else None
        if previous is not None and previous.startswith("--") or not WORD.match(choices[-1]):
            for e in active:
                e.append(choices[0])
            continue
        if all(WORD.match(w) for w in active[0]):
            # `alias set|rm X`: the alternatives share the path before and what follows.
            active = [e + [choice] for e in active for choice in choices]
        else:
            # `trust add PUB [--name N]|list|remove K`: the first alternative ends at its `|`; each other one is a
            # subcommand of the shared path, and what follows belongs to the last.
            path = []
            for w in active[0]:
                if not WORD.match(w):
                    break
                path.append(w)
            done += [e + [choices[0]] for e in active] + [path[:-1] + [c] for c in choices[1:-1]]
            active = [path[:-1] + [choices[-1]]]
    return [" ".join(e) for e in done + active]


def check(line):
    """Problems with one concrete command line, each in one sentence; none when it parses."""
    words = [w for w in split_top(line, " ") if w]
    if not words or words[0] == "...":
        return []
    path, rest = [], list(words)
    subcommands, _, _, default = help_of(())
    while rest and rest[0] in subcommands:
        path.append(rest.pop(0))
        subcommands, _, _, default = help_of(tuple(path))
    if rest and WORD.match(rest[0]) and subcommands and not default:
        return [f"'{rest[0]}' is not a subcommand of coffer {' '.join(path)}"]
    if not rest:
        return []  # a command named in prose (`coffer trust registry`): it exists
    if subcommands and default:
        path.append(default)
    _, options, arguments, _ = help_of(tuple(path))
    problems, given, given_optional, repeated = [], 0, 0, False

    def walk(tokens, optional):
        nonlocal given, given_optional, repeated
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token.startswith("[") and token.endswith("]") and split_top(token[1:-1], " ") != [token[1:-1]] or (token.startswith("[--")):
                walk([t for t in split_top(token[1:-1], " ") if t], True)
            elif token.startswith("["):
                walk([token[1:-1]], True)
            elif token.startswith("--"):
                name = token.split("=")[0]
                if name not in options:
                    problems.append(f"coffer {' '.join(path)} takes no {name}")
                elif options[name]:
                    if "=" not in token:
                        i += 1
                        if i >= len(tokens) or tokens[i].startswith("--"):
                            problems.append(f"coffer {' '.join(path)} {name} needs a value")
            elif token == "..." or token.endswith("..."):
                repeated = True
                if token != "...":
                    given += 0 if optional else 1
                    given_optional += 1 if optional else 0
            elif token in ("-o", "-"):
                if token == "-o":
                    i += 1
            else:
                if optional:
                    given_optional += 1
                else:
                    given += 1
            i += 1

    walk(rest, False)
    required = sum(1 for _, optional, _ in arguments if not optional)
    takes_any = any(r for _, _, r in arguments)
    if given < required and not repeated:
        problems.append(f"coffer {' '.join(path)} needs {required} argument(s) ({', '.join(a for a, _, _ in arguments)}), the line gives {given}")
    if not takes_any and given + given_optional > len(arguments):
        problems.append(f"coffer {' '.join(path)} takes {len(arguments)} argument(s), the line gives {given + given_optional}")
    return problems


@pytest.mark.parametrize("line", readme_lines())
def test_readme_command_line_parses(line):
    problems = [f"{alternative}: {p}" for alternative in alternatives(line) for p in check(alternative)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_what_it_looks_for():
    """The checks can fail: a missing argument, an unknown option, a missing value, an unknown subcommand."""
    assert check("trust add --name alice") != []
    assert check("list --colour red") != []
    assert check("push m model --identity") != []
    assert check("trust adopt PUB") != []
    assert check("trust add PUB --name alice") == []
    assert check("alias rm m@prod 1 2") != []
