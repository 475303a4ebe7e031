#!/usr/bin/env python3
"""Self cost per source file of a callgrind dump, inlined code counted in its own file.

With fat LTO the whole request path is inlined into a few symbols (a worker's `block_on`), so
callgrind_annotate's per-function view puts everything under `main`; the line tables still say
which file every inlined instruction came from (callgrind's fi=/fe= records). This sums self
cost by that file, and with --alloc counts the allocator calls (the callers are inlined too,
so they show as std's `sys/alloc`). Needs a dump written with --compress-strings=no (as
`PROFILE=callgrind benches/load/peers.sh` does).

    benches/load/callgrind-by-file.py DUMP REQUESTS [TOP]
"""
import collections
import sys


def main(path: str, requests: int, top: int) -> None:
    per_file = collections.Counter()
    allocs = collections.Counter()
    fl = current = "?"
    callee = ""
    in_call = False
    total = 0
    for line in open(path, errors="replace"):
        if line.startswith("fl="):
            fl = current = line[3:].strip()
        elif line.startswith(("fi=", "fe=")):
            current = line[3:].strip()
        elif line.startswith("fn="):
            current = fl
        elif line.startswith("cfn="):
            callee = line[4:].strip()
        elif line.startswith("calls="):
            # The next cost line is the call's inclusive cost, not self cost.
            in_call = True
            if callee in ("malloc", "free", "realloc", "calloc"):
                allocs[callee] += int(line[6:].split()[0])
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if in_call:
                in_call = False
            elif len(fields) >= 2 and fields[1].isdigit():
                per_file[current] += int(fields[1])
                total += int(fields[1])
    print(f"{total // requests} instructions per request (self cost summed over files)")
    print("allocator calls per request: " + ", ".join(f"{k} {v / requests:.1f}" for k, v in sorted(allocs.items())))
    for name, cost in per_file.most_common(top):
        print(f"{cost // requests:>8} {100 * cost / total:5.1f}%  {name[-100:]}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 30)
