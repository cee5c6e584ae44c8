"""Every module imported by the repository's Python files is the standard library, a module of this
repository, or installed by requirements.txt (directly or as a dependency of what it names) — so a
forgotten requirement fails here, on the developer's machine, and not in a user's fresh virtualenv.

Optional imports are exempt: those guarded by ``try: ... except ImportError`` (or
ModuleNotFoundError), and modules the same file probes with ``importlib.util.find_spec('name')``.
"""
import ast
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files():
    """The tracked .py files (every .py file outside hidden and virtualenv folders without git)."""
    try:
        out = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        if out:
            return out
    except (OSError, subprocess.CalledProcessError):
        pass
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('venv', 'runs', 'data')]
        found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith('.py')]
    return found


def probed(tree):
    """Modules whose presence the file checks with ``importlib.util.find_spec('name')``: it
    imports them only when they are there (bench.py's optional sklearn baseline)."""
    return {node.args[0].value.split('.')[0] for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', None)) == 'find_spec'
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


def guarded(tree):
    """ids of the nodes inside ``try`` blocks that catch ImportError / ModuleNotFoundError."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is not None and any(name in ast.dump(h.type) for name in
                                           ('ImportError', 'ModuleNotFoundError'))
                for h in node.handlers):
            ids.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return ids


def third_party_imports(files):
    """{top-level module: first file importing it} over ``files``, unguarded absolute imports of
    modules that are neither the standard library nor this repository's."""
    local = {f.split('/')[0].removesuffix('.py') for f in files}
    local |= {os.path.basename(f).removesuffix('.py') for f in files}
    used = {}
    for path in files:
        with open(os.path.join(ROOT, path), encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        optional, probes = guarded(tree), probed(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top not in sys.stdlib_module_names | local | probes | {'__future__'}:
                    used.setdefault(top, path)
    return used


def canonical(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def requirement_names(lines):
    """Distribution names of requirements.txt's lines (comments, options and markers dropped)."""
    names = []
    for line in lines:
        line = line.split('#')[0].strip()
        if line and not line.startswith('-'):
            names.append(canonical(re.split(r'[<>=!~;\[ @]', line, maxsplit=1)[0]))
    return names


def installed_closure(roots):
    """The distributions ``roots`` install: themselves and, transitively, their non-extra
    dependencies (as installed here)."""
    closure, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if re.search(r'\bextra\s*==', req.partition(';')[2]):  # only with an extra
                continue
            todo.append(canonical(re.split(r'[<>=!~;\[ (]', req, maxsplit=1)[0]))
    return closure


def test_the_checker_sees_imports_guards_and_dependencies(tmp_path):
    """The helpers on a hand-made case: the oracle the real check relies on."""
    tree = ast.parse('import os\ntry:\n    import wandb\nexcept ImportError:\n    wandb = None\n'
                     'import numpy.linalg\nfrom PIL import Image\nfrom . import sibling\n')
    optional = guarded(tree)
    assert probed(ast.parse("import importlib.util\nif importlib.util.find_spec('sklearn'):\n"
                            "    import sklearn.decomposition\n")) == {'sklearn'}
    assert {n.names[0].name for n in ast.walk(tree) if isinstance(n, ast.Import) and id(n) in optional} == {'wandb'}
    assert requirement_names(['torch>=2.1  # the model', '', '-r other.txt', 'Pillow[extra]==10',
                              'typing_extensions ; python_version < "3.12"']) == \
        ['torch', 'pillow', 'typing-extensions']
    # torchvision pulls in pillow: PIL counts as installed by a requirements file naming torchvision
    assert 'pillow' in installed_closure(['torchvision'])
    assert 'pillow' not in installed_closure(['tqdm'])


REQUIREMENT_FILES = ('requirements.txt', 'requirements-integrations.txt')
"""What CI (.ci/run) installs: the method's requirements and the optional integrations'."""


def test_every_import_is_installed_by_requirements_txt():
    closure = set()
    for name in REQUIREMENT_FILES:
        with open(os.path.join(ROOT, name)) as f:
            closure |= installed_closure(requirement_names(f))
    providers = metadata.packages_distributions()  # top-level module -> distributions
    missing = []
    for module, path in sorted(third_party_imports(python_files()).items()):
        dists = {canonical(d) for d in providers.get(module, [])}
        if not dists & closure:
            why = ('not installed here at all' if not dists else
                   f'installed here by {", ".join(sorted(dists))}, which requirements.txt does not pull in')
            missing.append(f'{module} (imported by {path}): {why}')
    if missing:
        pytest.fail('imported but not installed by requirements.txt:\n  ' + '\n  '.join(missing))
