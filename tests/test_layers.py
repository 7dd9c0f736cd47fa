"""The import picture: entry points -> engine/ -> models/, datasets/ -> utils/, every arrow pointing down."""
import ast

from helpers import REPO

# What each package may import of the project (besides itself).
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "datasets": {"utils"},
    "engine": {"models", "datasets", "utils"},
}


def project_imports(path) -> set[str]:
    """The project packages a file imports (first name of every import, at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(ALLOWED)


def test_every_import_between_packages_points_down():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).glob("*.py")):
            extra = project_imports(path) - allowed - {package}
            if extra:
                wrong.append(f"{path.relative_to(REPO)} imports {sorted(extra)}")
    assert not wrong, wrong


def test_no_module_edits_sys_path_but_the_test_configuration():
    needle = "sys.path" + ".insert"  # spelled in two parts so that this file does not match itself
    edits = [str(p.relative_to(REPO)) for p in REPO.rglob("*.py")
             if ".venv" not in p.parts and needle in p.read_text() and p.name != "conftest.py"]
    assert edits == [], edits
