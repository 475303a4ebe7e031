#!/usr/bin/env python3
"""Validates every Kubernetes manifest under a folder against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors) and checks that each kustomization
lists only files that exist. Exits non-zero on the first folder with a problem."""
import pathlib
import subprocess
import sys

import yaml


def main(root: str) -> int:
    failed = False
    manifests = []
    for path in sorted(pathlib.Path(root).rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if path.name == "kustomization.yaml":
            for doc in docs:
                for resource in doc.get("resources", []):
                    if not (path.parent / resource).exists():
                        print(f"{path}: lists missing resource {resource}")
                        failed = True
            continue
        manifests.append(str(path))
    if not manifests:
        print(f"no manifests under {root}")
        return 1
    result = subprocess.run(["kubernetes-validate", "--strict", "--quiet", *manifests])
    failed |= result.returncode != 0
    print(f"{len(manifests)} manifest file(s): {'FAILED' if failed else 'valid'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy"))
