"""Every ready script's command line passes its entry point's flag checks (a flag the run would ignore, or a value
that makes no sense, would stop the script at once), the documented variants included."""
import json
import re
import shlex
import subprocess
import sys

from helpers import REPO, subprocess_env

ENTRY = re.compile(r"\b(main_distill|main_lincls|run_knn)\.py\b")
# Variants the scripts' comments offer: "$@" takes them.
VARIANTS = {"SR18-TR50-compress.sh": [[], ["--compress_one_bank"]]}


def command_lines() -> dict[str, list[list[str]]]:
    """Entry point -> the argument lists of every script that runs it (shell variables replaced by a word)."""
    found: dict[str, list[list[str]]] = {}
    scripts = sorted((REPO / "scripts").glob("*/*.sh")) + [REPO / "run_knn.sh"]
    for script in scripts:
        joined = script.read_text().replace("\\\n", " ")
        line = next(text for text in joined.splitlines() if ENTRY.search(text) and not text.lstrip().startswith("#"))
        words = shlex.split(line)
        start = next(i for i, w in enumerate(words) if ENTRY.search(w))
        defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}$]*)\}", joined, re.M))  # NAME=${NAME:-default}
        arrays = {name: shlex.split(items) for name, items in re.findall(r"^(\w+)=\(([^)]*)\)", joined, re.M)}
        expanded = [item for w in words[start + 1:] if w != "$@"
                    for item in arrays.get(w.removeprefix("${").removesuffix("[@]}"), [w])]
        args = [re.sub(r"\$\{?(\w+)[^}\s]*\}?", lambda m: defaults.get(m.group(1)) or "x", w) for w in expanded]
        for extra in VARIANTS.get(script.name, [[]]):
            found.setdefault(ENTRY.search(words[start]).group(1), []).append([*args, *extra])
    return found


CHECK = {
    "main_distill": "from engine.distillation import check_options, resolve_method_defaults\n"
                    "from engine.options import DistillOptions as Options\n"
                    "check = lambda o: check_options(resolve_method_defaults(o), 1)",
    "main_lincls": "from main_lincls import check_options, resolve_defaults\n"
                   "from engine.options import LinclsOptions as Options\n"
                   "check = lambda o: check_options(resolve_defaults(o))",
    "run_knn": "from run_knn import check_options as check\nfrom engine.options import KnnStepOptions as Options",
}


def test_every_ready_script_passes_its_entry_points_flag_checks(tmp_path):
    lines = command_lines()
    assert set(lines) == set(CHECK) and sum(map(len, lines.values())) >= 16
    for entry, cases in lines.items():
        program = (f"import json, sys\nimport {entry}\nfrom engine.options import from_argv\n{CHECK[entry]}\n"
                   "for args in json.loads(sys.argv[1]):\n"
                   f"    check(from_argv(Options, {entry}.FLAGS, ['{entry}.py', *args]))\n"
                   "print('checked', len(json.loads(sys.argv[1])))")
        done = subprocess.run([sys.executable, "-c", program, json.dumps(cases)], cwd=REPO,
                              env=subprocess_env(tmp_path), capture_output=True, text=True)
        assert done.returncode == 0 and f"checked {len(cases)}" in done.stdout, (entry, done.stderr[-2000:])
