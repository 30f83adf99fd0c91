#!/usr/bin/env python3
"""Checks that persistence/raw_baseline.cpp still runs job_store's SQL: each
sql_* string it copies must equal job_store.cpp's, character for character,
after the column macros are expanded. Exit 1 names the strings that drifted.
Usage: tools/bench/check_raw_sql.py [repository root]"""
import pathlib
import re
import sys


def strings(path, macro):
    text = pathlib.Path(path).read_text()
    lines = re.search(r"#define " + macro + r"\s*\\\n((?:.*\\\n)*.*\n)", text).group(1)
    columns = "".join(re.findall(r'"([^"]*)"', lines))
    found = {}
    for m in re.finditer(r"const char\* const (sql_\w+)\s*=?\s*([^;]*);", text):
        body = m.group(2).replace(macro, '"' + columns + '"')
        found[m.group(1)] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))
    return found


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[2])
    store = strings(root / "persistence/job_store.cpp", "INFERGRID_JOB_COLUMNS")
    raw = strings(root / "persistence/raw_baseline.cpp", "INFERGRID_RAW_JOB_COLUMNS")
    drifted = [name for name in raw if store.get(name) != raw[name]]
    for name in drifted:
        print(f"{name}: raw_baseline.cpp differs from job_store.cpp", file=sys.stderr)
        print(f"  job_store:    {store.get(name)!r}", file=sys.stderr)
        print(f"  raw_baseline: {raw[name]!r}", file=sys.stderr)
    if not raw:
        print("no sql_* strings found in raw_baseline.cpp", file=sys.stderr)
        return 1
    print(f"check_raw_sql: {len(raw) - len(drifted)} passed, {len(drifted)} failed")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
