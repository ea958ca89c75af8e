"""The Dockerfile as its instructions, for the deploy checks.

`instructions()` is shared by scripts/check-deploy.sh (run as a script: every
COPY source must exist in the build context and pass .dockerignore, since a
missing one fails `docker build` only on a machine with an engine) and by
local-fleet.py (the runtime stage's ENV and ENTRYPOINT).
"""
import fnmatch
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def instructions(path=os.path.join(REPO, "deploy", "Dockerfile")):
    """The Dockerfile's logical lines: comments dropped, continuations joined."""
    lines, cur = [], ""
    for raw in open(path):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append(cur + line)
        cur = ""
    return lines


def copy_problems():
    """COPY/ADD sources (from the build context) that are missing or ignored."""
    # .dockerignore: last matching pattern wins; "!" re-includes.
    rules = []
    for raw in open(os.path.join(REPO, ".dockerignore")):
        pat = raw.strip()
        if pat and not pat.startswith("#"):
            rules.append((pat.startswith("!"), pat.lstrip("!").rstrip("/")))

    def ignored(path):
        verdict = False
        parts = path.split("/")
        for negate, pat in rules:
            # A pattern matching a directory matches everything below it.
            if any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
                verdict = not negate
        return verdict

    problems = []
    for line in instructions():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        for src in args[:-1]:
            if not os.path.exists(src):
                problems.append(f"COPY source {src} does not exist")
                continue
            paths = [src]
            if os.path.isdir(src):
                paths = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs]
            dropped = [p for p in paths if ignored(os.path.normpath(p))]
            if dropped:
                problems.append(f"COPY {src}: .dockerignore drops {', '.join(dropped[:5])}")
    return problems


if __name__ == "__main__":
    os.chdir(REPO)
    found = copy_problems()
    for problem in found:
        print(problem)
    sys.exit(1 if found else 0)
