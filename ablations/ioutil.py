"""The I/O helpers every part may use: checks of what the user names (paths, names, YAML files) made before any
work starts, the first line of an error, redaction of secrets, and the commit the code runs at.

Every path the tool will read or write, every name that becomes a file or folder name, and every YAML file go
through here, so that bad input fails at once with one line naming the flag or file, the value and what is
allowed. The functions raise the caller's error type (``ConfigError``, ``StudyError``, ``ResultsError`` …), which
the command line turns into exit status 2. This module imports nothing of the project, so anything may import it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml


def check_readable_file(flag: str, path: str | Path, error: type[Exception] = ValueError) -> Path:
    """``path`` exists, is a file (not a folder) and can be opened for reading."""
    path = Path(path)
    if not path.exists():
        raise error(f"{flag} {str(path)!r}: cannot be read (no such file)")
    if path.is_dir():
        raise error(f"{flag} {str(path)!r}: cannot be read (a folder; expected a file)")
    if not path.is_file():
        raise error(f"{flag} {str(path)!r}: is not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as problem:
        raise error(f"{flag} {str(path)!r}: cannot be read ({problem.strerror})") from None
    return path


def check_readable_dir(flag: str, path: str | Path, error: type[Exception] = ValueError) -> Path:
    """``path`` exists and is a folder whose entries can be listed."""
    path = Path(path)
    if not path.exists():
        raise error(f"{flag} {str(path)!r}: no such folder")
    if not path.is_dir():
        raise error(f"{flag} {str(path)!r}: is a file; expected a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise error(f"{flag} {str(path)!r}: folder cannot be read (permission denied)")
    return path


def check_writable_dir(flag: str, path: str | Path, error: type[Exception] = ValueError) -> Path:
    """``path`` is a folder that exists and can be written, or one that can be created: its nearest existing
    ancestor is a writable folder. Creates nothing (a probe file in that ancestor is removed at once)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{flag} {str(path)!r}: is a file; expected a folder (or a path where one can be created)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{flag} {str(path)!r}: cannot be created, {str(existing)!r} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".ablations-write-check-")
    except OSError as problem:
        where = "" if existing == path else f" (its nearest existing folder {str(existing)!r} is not writable)"
        raise error(f"{flag} {str(path)!r}: cannot be written{where}: {problem.strerror}") from None
    os.close(handle)
    os.unlink(probe)
    return path


def check_writable_file(flag: str, path: str | Path, error: type[Exception] = ValueError) -> Path:
    """``path`` is a file that can be written: not a folder, and its folder exists or can be created."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{flag} {str(path)!r}: is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise error(f"{flag} {str(path)!r}: file cannot be written (permission denied)")
    existing = path.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{flag} {str(path)!r}: cannot be created, {str(existing)!r} is a file, not a folder")
    try:
        check_writable_dir(flag, existing, error)
    except error:
        raise error(f"{flag} {str(path)!r}: cannot be written (its folder {str(existing)!r} is not writable)") from None
    return path


# A name that becomes one file or folder name: no separator, no parent reference, nothing invisible.
_BAD_NAME = re.compile(r"[/\\\x00-\x1f]")


def check_name(flag: str, name: Any, error: type[Exception] = ValueError) -> str:
    """``name`` can be used as one file or folder name: not empty, no ``/``, ``\\``, control characters (NUL …),
    and not ``.`` or ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise error(f"{flag} {name!r}: expected a non-empty name")
    if _BAD_NAME.search(name) or set(name) == {"."}:
        raise error(
            f"{flag} {name!r}: becomes a file or folder name; it may not contain '/', '\\' or control characters, "
            "nor be '.' or '..'"
        )
    return name


def read_text_file(flag: str, path: str | Path, error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of a file that exists and is text (no NUL byte, valid UTF-8)."""
    path = check_readable_file(flag, path, error)
    try:
        data = path.read_bytes()
    except OSError as problem:
        raise error(f"{flag} {str(path)!r}: cannot be read ({problem.strerror})") from None
    if b"\x00" in data:
        raise error(f"{flag} {str(path)!r}: is a binary file (NUL byte at offset {data.index(0)}); expected text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        raise error(
            f"{flag} {str(path)!r}: is not UTF-8 text (byte {data[problem.start]:#04x} at offset {problem.start})"
        ) from None


# --------------------------------------------------------------------------------------------------------------
# YAML: duplicate keys are an error, not the last value silently kept.


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (YAML 1.2 says keys are unique; PyYAML keeps
    the last one, so a repeated arm would silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges; explicit keys may override merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: SafeLoader reports it
            if first is not None:
                raise DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str, error: type[Exception] = ValueError) -> Any:
    """Parse ``text`` (from ``where``, e.g. ``"config file 'x.yaml'"``) with unique keys; any problem raises
    ``error`` with one line: ``<where>: not valid YAML at line L, column C`` or ``<where>: duplicate key 'k' at
    line L (first at line M); each key may appear once``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except DuplicateKeyError as problem:
        mark = problem.problem_mark
        raise error(f"{where}: {problem.problem.replace(' (', f' at line {mark.line + 1} (', 1)}; each key may "
                    "appear once") from None  # fmt: skip
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{where}: not valid YAML{at}") from None


__all__ = [
    "DuplicateKeyError",
    "UniqueKeyLoader",
    "check_name",
    "check_readable_dir",
    "check_readable_file",
    "check_writable_dir",
    "check_writable_file",
    "load_yaml",
    "read_text_file",
]


def require_extra(flag: str, module: str, extra: str, package: str, error: type[Exception] = ImportError) -> Any:
    """The module ``module`` of an optional extra, imported; else one line naming the setting that needs it, the
    extra and how to install it (``pip install -e '.[extra]'``; ``make install`` installs every extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as problem:
        raise error(
            f"{flag} needs the optional extra '{extra}' ({package}): pip install -e '.[{extra}]', or make install"
            f" — importing {module} failed: {first_line(problem)}"
        ) from None


def git_commit() -> str | None:
    """The commit of the code that is running (the checkout this package lives in), or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name when the message is empty), cut at ``limit``."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else "")
    return line[:limit] if limit is not None else line


# user:password@ after the // of a URL (also of a malformed one, e.g. `postgresql//u:pw@h`), by SQLAlchemy's own
# rule: the user ends at ':' or '/', the password at the first '@'.
_USERINFO = re.compile(r"(?P<pre>//)(?P<user>[^\s:/@'\"?#]*):(?P<secret>[^\s@'\"]+)@")
# ?password=… &sslpassword=… &api_key=… &token=… (query strings), and password=… in a libpq keyword string.
_SECRET_PARAM = re.compile(
    r"(?P<pre>(?:^|[?&;\s])[^=&#;\s?]*(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|auth|"
    r"credential)[^=&#;\s]*=)(?P<secret>[^&#;\s'\"]*?)(?=[:,.)]*(?:[&#;\s'\"]|$))",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` (a storage URL, or a message that contains one) with every password replaced by ``***``: the
    ``user:password@`` part of a URL, and query or keyword parameters named like a secret (``?password=``,
    ``sslpassword``, ``api_key``, ``token``, …). Every URL the project prints, stores or logs goes through it.

    >>> redact("postgresql://u:pw@h/db"), redact("postgresql://u@h/db?sslmode=require&password=pw")
    ('postgresql://u:***@h/db', 'postgresql://u@h/db?sslmode=require&password=***')
    """
    text = str(text)
    text = _USERINFO.sub(lambda m: f"{m['pre']}{m['user']}:***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['pre']}{'***' if m['secret'] else ''}", text)
