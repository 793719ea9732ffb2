"""Real text for the development set's inputs: sentences from the docstrings of the Python standard library
(English prose written by people, present on every machine), split by module into two disjoint halves, one for
calibration and one for evaluation.  Deterministic for a given Python version."""

from __future__ import annotations

import functools
import importlib
import inspect
import re

MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "bz2", "calendar", "cmd", "codecs", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "dis", "doctest", "email.message", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookies", "imaplib", "inspect", "ipaddress", "itertools", "json", "locale", "logging",
    "lzma", "mailbox", "mimetypes", "multiprocessing.pool", "netrc", "numbers", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile", "pstats",
    "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
    "trace", "traceback", "tracemalloc", "turtle", "types", "typing", "unittest.case", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom", "zipfile", "zipimport",
)

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_OK = re.compile(r"^[A-Za-z0-9 ,.;:'\"()\-!?%/&+=]+$")


def _docs(module: str) -> list[str]:
    try:
        mod = importlib.import_module(module)
    except Exception:  # a module this Python lacks: skipped (the other half still has text)
        return []
    out = [inspect.getdoc(mod) or ""]
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name, None)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            out.append(inspect.getdoc(obj) or "")
    return out


@functools.lru_cache(maxsize=None)
def sentences(split: str) -> tuple[str, ...]:
    """English sentences (20-160 characters, plain ASCII punctuation), from every other module of MODULES:
    ``calib`` the even ones, ``eval`` the odd ones (so no sentence is in both)."""
    if split not in ("calib", "eval"):
        raise ValueError(split)
    mods = MODULES[0::2] if split == "calib" else MODULES[1::2]
    seen: set[str] = set(sentences("calib")) if split == "eval" else set()
    out: list[str] = []
    for m in mods:
        for doc in _docs(m):
            for para in re.split(r"\n\s*\n", doc):
                para = " ".join(para.split())
                for s in _SENT.split(para):
                    s = s.strip()
                    if 20 <= len(s) <= 160 and _OK.match(s) and " " in s and s not in seen and ">>>" not in s:
                        seen.add(s)
                        out.append(s)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def words(split: str) -> tuple[str, ...]:
    """The words of :func:`sentences` (letters, digits and inner punctuation), in order of appearance, unique."""
    seen: set[str] = set()
    out = []
    for s in sentences(split):
        for w in s.split():
            w = w.strip("\"'()")
            if w and w not in seen and len(w) <= 16:
                seen.add(w)
                out.append(w)
    return tuple(out)
