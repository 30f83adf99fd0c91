#!/usr/bin/env bash
# Builds infergrid against a CUDA LibTorch, runs the unit tests and a GPU smoke
# test (docs/gpu.md). Every step runs even when an earlier one failed, as far
# as it can; the summary at the end says what passed, and the exit status is 0
# only when everything did.
#
#   tools/gpu/build-cuda.sh [options]
#
#   --torch DIR        LibTorch: its root (holding share/cmake/Torch) or a CMake
#                      prefix such as `python3 -c 'import torch;
#                      print(torch.utils.cmake_prefix_path)'`. Default: the
#                      torch package of $PYTHON.
#   --deps-prefix DIR  where CAF, Boost, spdlog, fmt, yaml-cpp, nlohmann-json,
#                      CLI11 and SQLite live (a `usr` folder; default: none,
#                      i.e. the system's /usr).
#   --debs DIR         unpack every DIR/*.deb with `dpkg -x` into
#                      /tmp/infergrid-deps and use /tmp/infergrid-deps/usr as
#                      --deps-prefix (for a host without these packages).
#   --build-dir DIR    default build-cuda
#   --logs DIR         where logs and the summary go (default BUILD/gpu-logs)
#   --jobs N           parallel compile jobs (default: nproc)
#   --no-unit          skip `ctest -L unit`
#   --integration      also run `ctest -L integration` (device auto -> cuda:0)
#   --no-smoke         skip tools/gpu/smoke.py
#   --allow-cpu        do not fail when CMake finds no CUDA in LibTorch
#
# Environment: PYTHON (default: the first python3 that imports torch), CXX.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

torch_dir="" deps_prefix="" debs="" build="" logs="" jobs="$(nproc)"
run_unit=1 run_integration=0 run_smoke=1 cuda_mode=ON
while [[ $# -gt 0 ]]; do
  case "$1" in
    --torch) torch_dir="$2"; shift 2 ;;
    --deps-prefix) deps_prefix="$2"; shift 2 ;;
    --debs) debs="$2"; shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --no-unit) run_unit=0; shift ;;
    --integration) run_integration=1; shift ;;
    --no-smoke) run_smoke=0; shift ;;
    --allow-cpu) cuda_mode=AUTO; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
build="${build:-$root/build-cuda}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
logs="${logs:-$build/gpu-logs}"
mkdir -p "$logs"
logs="$(cd "$logs" && pwd)"

declare -a summary=()
failed=0
step() { # step NAME STATUS [DETAIL]
  summary+=("$(printf '%-12s %-5s %s' "$1" "$2" "${3:-}")")
  [[ "$2" == "FAIL" ]] && failed=1
  echo "== $1: $2 ${3:-}"
}
finish() {
  {
    echo "build-cuda.sh summary ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    printf '%s\n' "${summary[@]}"
  } | tee "$logs/summary.txt"
  exit "$failed"
}

# -- Python with torch (for the default LibTorch and the smoke test) ----------
if [[ -z "${PYTHON:-}" ]]; then
  for candidate in python3 /opt/torch/.venv/bin/python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
       && "$candidate" -c 'import torch' >/dev/null 2>&1; then
      PYTHON="$(command -v "$candidate")"
      break
    fi
  done
fi
PYTHON="${PYTHON:-python3}"

# -- What is on this machine ---------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm)"
  grep -h PRETTY_NAME /etc/os-release 2>/dev/null
  echo "glibc: $(ldd --version 2>/dev/null | head -1)"
  echo "compiler: $(${CXX:-c++} --version 2>/dev/null | head -1)"
  echo "cmake: $(cmake --version 2>/dev/null | head -1)"
  echo "ninja: $(ninja --version 2>/dev/null)"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -2 | head -1)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    | sed 's/^/gpu: /'
  echo "python: $PYTHON"
  "$PYTHON" - <<'EOF' 2>&1
import torch
print("torch:", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(),
      "cxx11abi", int(torch._C._GLIBCXX_USE_CXX11_ABI),
      "gpu visible", torch.cuda.is_available())
EOF
} 2>&1 | tee "$logs/environment.txt"

# -- LibTorch -------------------------------------------------------------------
if [[ -z "$torch_dir" ]]; then
  torch_dir="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"
  if [[ -z "$torch_dir" ]]; then
    step libtorch FAIL "no --torch and $PYTHON cannot import torch"
    finish
  fi
  abi="$("$PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
  if [[ "$abi" != 1 ]]; then
    # Debian's (and most distributions') C++ libraries use the new ABI; a
    # pre-cxx11-ABI LibTorch cannot be linked with them (libtorch-notes.md §5).
    step libtorch FAIL "this torch uses _GLIBCXX_USE_CXX11_ABI=0; CAF, spdlog, yaml-cpp from Debian use 1. Use a cxx11-ABI LibTorch"
    finish
  fi
fi
torch_config="$(find -L "$torch_dir" -maxdepth 4 -name TorchConfig.cmake 2>/dev/null | head -1)"
if [[ -z "$torch_config" ]]; then
  step libtorch FAIL "no TorchConfig.cmake under $torch_dir"
  finish
fi
# .../share/cmake/Torch/TorchConfig.cmake -> .../lib holds libtorch*.so
torch_root="$(cd "$(dirname "$torch_config")/../../.." && pwd)"
torch_lib="$torch_root/lib"
step libtorch ok "$torch_root"

# -- Dependencies from Debian packages ---------------------------------------------
if [[ -n "$debs" ]]; then
  deps_root=/tmp/infergrid-deps
  rm -rf "$deps_root"
  mkdir -p "$deps_root"
  n=0
  for f in "$debs"/*.deb; do
    dpkg -x "$f" "$deps_root" && n=$((n + 1))
  done
  deps_prefix="$deps_root/usr"
  step deps ok "$n packages unpacked into $deps_root"
fi

cmake_args=(-S "$root" -B "$build" -G Ninja -DINFERGRID_CUDA="$cuda_mode"
            -DINFERGRID_PYTHON="$PYTHON")
prefix_path="$torch_dir"
ld_path="$torch_lib"
if [[ -n "$deps_prefix" ]]; then
  multiarch="$(${CXX:-c++} -print-multiarch 2>/dev/null || true)"
  libdir="$deps_prefix/lib/${multiarch:-x86_64-linux-gnu}"
  prefix_path="$prefix_path;$deps_prefix"
  ld_path="$libdir:$ld_path"
  # cmake/FindCAF.cmake uses find_path/find_library: name the files.
  if [[ -f "$deps_prefix/include/caf/all.hpp" ]]; then
    cmake_args+=(-DCAF_INCLUDE_DIR="$deps_prefix/include"
                 -DCAF_CORE_LIBRARY="$libdir/libcaf_core.so"
                 -DCAF_IO_LIBRARY="$libdir/libcaf_io.so"
                 -DCAF_OPENSSL_LIBRARY="$libdir/libcaf_openssl.so")
  fi
  # Debian keeps some headers under include/<multiarch> (OpenSSL's
  # configuration.h), which a compiler that is not Debian's does not search.
  if [[ -d "$deps_prefix/include/${multiarch:-x86_64-linux-gnu}" ]]; then
    cmake_args+=(-DCMAKE_CXX_FLAGS="-isystem $deps_prefix/include/${multiarch:-x86_64-linux-gnu}")
  fi
  if [[ -f "$deps_prefix/include/sqlite3.h" ]]; then
    cmake_args+=(-DSQLite3_INCLUDE_DIR="$deps_prefix/include"
                 -DSQLite3_LIBRARY="$libdir/libsqlite3.so")
  fi
fi
cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix_path")
export LD_LIBRARY_PATH="$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$logs/environment.txt"

# -- Configure and build ---------------------------------------------------------
echo "cmake ${cmake_args[*]}" > "$logs/configure.log"
if cmake "${cmake_args[@]}" >> "$logs/configure.log" 2>&1; then
  step configure ok "$(grep -o 'infergrid: LibTorch.*' "$logs/configure.log")"
else
  tail -30 "$logs/configure.log"
  step configure FAIL "see configure.log"
  finish
fi

start=$(date +%s)
if ninja -C "$build" -k 0 -j "$jobs" > "$logs/build.log" 2>&1; then
  step build ok "$(( $(date +%s) - start )) s with -j $jobs"
else
  grep -E "^FAILED|error:" "$logs/build.log" | head -40
  step build FAIL "$(grep -c '^FAILED' "$logs/build.log") target(s) failed, see build.log"
fi

# -- Unit tests ---------------------------------------------------------------------
if [[ $run_unit == 1 ]]; then
  if (cd "$build" && ctest -L unit --output-on-failure) > "$logs/ctest-unit.log" 2>&1; then
    step unit ok "$(grep -E 'tests passed' "$logs/ctest-unit.log")"
  else
    grep -E "tests passed|\*\*\*|Failed|Not Run" "$logs/ctest-unit.log" | head -30
    step unit FAIL "$(grep -E 'tests passed' "$logs/ctest-unit.log"), see ctest-unit.log"
  fi
  # The GPU checks and timings of the facade print as test messages.
  if [[ -x "$build/tests/unit_inference" ]]; then
    (cd "$build" && ./tests/unit_inference -n -v4 -r 300 -s '^model_runner$') \
      > "$logs/unit-inference-verbose.log" 2>&1
    grep -E "warm-up|max \||forward B=|generate 32|tinyspeech .* bytes|greedy text|skipped" \
      "$logs/unit-inference-verbose.log" | sed -e 's/^ *-> //' -e 's/ \[line [0-9]*\]$//' \
      | tee "$logs/facade-figures.txt"
  fi
fi

# -- Smoke test: serve on cuda and on cpu, compare ---------------------------------
if [[ $run_smoke == 1 ]]; then
  binary="$build/tools/infergrid"
  if [[ ! -x "$binary" ]]; then
    step smoke FAIL "no $binary (build failed?)"
  elif "$PYTHON" "$here/smoke.py" --binary "$binary" --work "$build/gpu-smoke" \
         --logs "$logs" > "$logs/smoke.log" 2>&1; then
    cat "$logs/smoke.log"
    step smoke ok "see smoke.log"
  else
    cat "$logs/smoke.log"
    step smoke FAIL "see smoke.log"
  fi
fi

# -- Integration tests (device "auto", so cuda:0 on a GPU host) -----------------
if [[ $run_integration == 1 ]]; then
  if (cd "$build" && ctest -L integration --output-on-failure) > "$logs/ctest-integration.log" 2>&1; then
    step integration ok "$(grep -E 'tests passed' "$logs/ctest-integration.log")"
  else
    tail -40 "$logs/ctest-integration.log"
    step integration FAIL "see ctest-integration.log"
  fi
fi
finish
