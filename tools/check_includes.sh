#!/usr/bin/env bash
# Checks that heavy headers stay in their folders (ARCHITECTURE.md):
# <torch/...>, <ATen/...>, <c10/...> only in inference/*.cpp; Beast/Asio only in
# http/*.cpp; <sqlite3.h> only in persistence/*.cpp. Exit 1 lists violations.
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"

status=0
check() {
  local pattern="$1" allowed="$2" what="$3"
  local hits
  hits=$(grep -rEn --include='*.hpp' --include='*.cpp' --include='*.h' "$pattern" \
           messages persistence inference actors http tools tests 2>/dev/null \
         | grep -Ev "^${allowed}" || true)
  if [[ -n "$hits" ]]; then
    echo "forbidden include of $what outside ${allowed}:" >&2
    echo "$hits" >&2
    status=1
  fi
}

check '^\s*#\s*include\s*[<"](torch|ATen|c10)/' 'inference/[^/]+\.cpp:' 'LibTorch'
check '^\s*#\s*include\s*[<"]boost/(beast|asio)' 'http/[^/]+\.cpp:' 'Beast/Asio'
check '^\s*#\s*include\s*[<"]sqlite3\.h' 'persistence/[^/]+\.cpp:' 'sqlite3.h'

if [[ $status -eq 0 ]]; then
  echo "check_includes: 1 passed, 0 failed"
fi
exit $status
