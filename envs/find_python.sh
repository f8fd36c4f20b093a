#!/usr/bin/env bash
# Print the path of a Python >= 3.11 for envs/install.sh: $PYTHON if set, else the first of
# python3.13, python3.12, python3.11, python3 on PATH, else `uv python find '>=3.11'`.
# None: exit 1 with one line that says how to get one without root.
set -euo pipefail

found=""  # the interpreters seen, with their versions, for the error message
check() {  # print $1's path and succeed if it is a Python >= 3.11
  local path version
  path=$(command -v "$1") || return 1
  version=$("$path" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || version="unusable"
  if [[ "$version" =~ ^3\.([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge 11 ]; then
    echo "$path"
    return 0
  fi
  found+="${found:+, }$1 $version"
  return 1
}

if [ -n "${PYTHON:-}" ]; then
  check "$PYTHON" && exit 0
  command -v "$PYTHON" >/dev/null || found="PYTHON=$PYTHON not found"
else
  for candidate in python3.13 python3.12 python3.11 python3; do
    check "$candidate" && exit 0
  done
  if command -v uv >/dev/null && uv_python=$(uv python find '>=3.11' 2>/dev/null); then
    check "$uv_python" && exit 0
  fi
fi

get_uv="python3 -m pip install --user uv && " uv="~/.local/bin/uv"  # printed for the user to run: no ~ expansion
if command -v uv >/dev/null; then get_uv="" uv="uv"; fi
echo "install.sh: needs Python >= 3.11 (found: ${found:-none}); without root: ${get_uv}$uv python install 3.12," \
  "then rerun with PYTHON=\$($uv python find 3.12) bash envs/install.sh" >&2
exit 1
