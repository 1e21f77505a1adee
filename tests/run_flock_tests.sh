#!/usr/bin/env sh
# The tests against the real flock-core from PyPI, which needs Python >= 3.12: they get a venv of
# their own (.venv312) with 'flockws[test,flock]'.  Without a Python >= 3.12 they are skipped, loudly.
set -eu
cd "$(dirname "$0")/.."

# A Python that really runs and is >= 3.12 (pyenv's shims exist on PATH even for versions not selected).
works() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
python=""
for candidate in python3.12 python3.13 python3.14; do
  if command -v "$candidate" >/dev/null 2>&1 && works "$candidate"; then python=$(command -v "$candidate"); break; fi
done
if [ -z "$python" ] && command -v pyenv >/dev/null 2>&1; then
  # pyenv answers "command not found" for python3.12 while another version is selected: ask it.
  version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | head -n 1 || true)  # the oldest: what the extra promises
  if [ -n "$version" ]; then python=$(PYENV_VERSION="$version" pyenv which python3 2>/dev/null || true); fi
  if [ -n "$python" ] && ! works "$python"; then python=""; fi
fi
if [ -z "$python" ]; then
  echo "SKIPPED the real-Flock tests: no Python >= 3.12 found (flock-core needs it)"
  exit 0
fi

echo "real-Flock tests with $python"
"$python" -m venv .venv312
.venv312/bin/pip install -q -e '.[test,flock]'
.venv312/bin/python -m pytest tests/test_flock*.py
