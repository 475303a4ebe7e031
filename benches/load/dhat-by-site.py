#!/usr/bin/env python3
"""Heap blocks per request by allocation site, from a DHAT profile of the data plane.

callgrind counts the allocator's instructions but, through fat LTO's inlining, not who called
it; valgrind's DHAT records every allocation's stack with inlined frames (from the line
tables), so this names the sites. Start-up allocations are counted too: sites below
`--min` blocks per request (default 0.5) are left out, which drops them. Written for
`PROFILE=dhat benches/load/peers.sh`.

    benches/load/dhat-by-site.py DHAT_JSON REQUESTS [--min 0.5] [--frames 4]
"""
import argparse
import json

# Frames of the allocator and of the standard library's containers that call it (valgrind's
# preload, Rust's `library/`): the site is the first frame below them.
SKIP = ("library/", "vgpreload_dhat")


def frame_name(frame: str) -> str:
    # "0x4A1B2C: function (file.rs:12)" or "[root]"; generic arguments left out.
    _, _, rest = frame.partition(": ")
    rest = rest or frame
    name, paren, place = rest.rpartition(" (")
    if not paren:
        return rest
    return f"{name.split('<', 1)[0] or name[:60]} ({place}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dump")
    parser.add_argument("requests", type=int)
    parser.add_argument("--min", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=4)
    args = parser.parse_args()
    with open(args.dump) as f:
        profile = json.load(f)
    frames = profile["ftbl"]
    sites = {}
    for pp in profile["pps"]:
        names = [frame_name(frames[i]) for i in pp["fs"]]
        own = [n for n in names if not any(s in n for s in SKIP)] or names
        key = tuple(own[: args.frames])
        blocks, total_bytes = sites.get(key, (0, 0))
        # DHAT's names: `tbk` total blocks, `tb` total bytes.
        sites[key] = (blocks + pp["tbk"], total_bytes + pp["tb"])
    rows = sorted(sites.items(), key=lambda kv: -kv[1][0])
    all_blocks = sum(b for b, _ in sites.values())
    print(f"{all_blocks / args.requests:.1f} blocks per request in all ({args.requests} requests)")
    for key, (blocks, total_bytes) in rows:
        per = blocks / args.requests
        if per < args.min:
            break
        print(f"{per:6.2f} blocks  {total_bytes / max(blocks, 1):7.0f} B avg")
        for name in key:
            print(f"         {name}")


if __name__ == "__main__":
    main()
