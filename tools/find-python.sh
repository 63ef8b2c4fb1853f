#!/usr/bin/env bash
# Prints the path of the first supported Python (default preference: 3.11, 3.12, 3.13; or the versions
# given as arguments): pythonX.Y on PATH (a pyenv shim counts only if it actually runs), then pyenv's
# and the usual install locations, then python3. Exits 1, saying what to install, when none is found.
set -uo pipefail
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.11 3.12 3.13)

runs_as() {  # runs_as INTERPRETER X.Y -> its sys.executable, when it runs and is version X.Y
    "$1" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$2'; print(sys.executable)" 2>/dev/null
}

for version in "${versions[@]}"; do
    for candidate in "python$version" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version"*/bin/"python$version" \
        "/usr/local/bin/python$version" "/usr/bin/python$version"; do
        if found=$(runs_as "$candidate" "$version"); then
            echo "$found"
            exit 0
        fi
    done
done
for version in "${versions[@]}"; do
    if found=$(runs_as python3 "$version"); then
        echo "$found"
        exit 0
    fi
done
cat >&2 <<MSG
No supported Python found: the router needs Python ${versions[*]} (one of them).
Install one, then run make again:
  Debian 12 / Ubuntu 24.04:  sudo apt-get install -y python3 python3-venv   (3.11 / 3.12)
  other systems:             pyenv install 3.11   (or 3.12, 3.13)
or name one:                 make PYTHON=/path/to/python3.12 ...
MSG
exit 1
