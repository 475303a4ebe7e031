#!/usr/bin/env python3
"""Validates what deploy/ ships. The Kubernetes manifests under deploy/kubernetes against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors, for a pinned
Kubernetes version): every manifest file as it is, and every kustomization rendered by
`kubectl kustomize` (the objects `kubectl apply -k` would send, patches and generated Secrets
included); each kustomization lists only files that exist. For the Kubernetes Deployments and
the compose file's services alike: every environment variable is one the binary reads, every
container port is a listener's, every probe path is served. The Dockerfile ships every binary
of the workspace, the data plane profile-guided by the workspace's own training load. Exits non-zero if anything fails."""
import pathlib
import subprocess
import sys
import tempfile

import yaml

# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default
# from 1.30; 1.32 is the oldest release still maintained upstream).
KUBERNETES_VERSION = "1.32.0"

# Where the binaries whose flags, ports and probe paths the manifests must match are built.
BINARIES = "target/debug"


def validate(files: list[str]) -> bool:
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES_VERSION, *files]
    )
    return result.returncode == 0


def served_paths(binary: pathlib.Path, args: list[str], key: str, paths: set[str]) -> dict:
    """Starts `binary` on ephemeral loopback ports and answers, for each path, the status its
    listener printed as `key=` gives (404 means it does not serve it)."""
    import time
    import urllib.error
    import urllib.request

    with tempfile.TemporaryDirectory() as work:
        args = [a.replace("{work}", work) for a in args]
        process = subprocess.Popen(
            [str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            base = None
            for line in process.stdout:
                if line.startswith(f"{key}="):
                    base = line.strip().split("=", 1)[1]
                    break
            if base is None:
                return {path: None for path in paths}
            statuses = {}
            for path in paths:
                for _ in range(50):
                    try:
                        with urllib.request.urlopen(base + path, timeout=2) as answer:
                            statuses[path] = answer.status
                    except urllib.error.HTTPError as error:
                        statuses[path] = error.code
                    except OSError:
                        time.sleep(0.1)
                        continue
                    break
            return statuses
        finally:
            process.terminate()
            process.wait(timeout=30)


def env_and_port_problems(name: str, help_text: str, env: dict, ports: dict) -> list[str]:
    """An environment variable `name --help` does not list, or a container port (by name)
    that no `*_LISTEN` variable's address names."""
    problems = []
    for var in env:
        if f"env: {var}=" not in help_text and f"env: {var}]" not in help_text:
            problems.append(f"{name}: {var} is not an environment variable it reads")
    listens = {k: v for k, v in env.items() if k.endswith("_LISTEN") and v}
    for port_name, number in ports.items():
        if not any(str(v).endswith(f":{number}") for v in listens.values()):
            problems.append(f"{name}: port {port_name} ({number}) is no listener's")
    return problems


def help_of(binaries: pathlib.Path, name: str) -> str:
    return subprocess.run([str(binaries / name), "--help"], capture_output=True, text=True).stdout


def check_compose(path: pathlib.Path, binaries: pathlib.Path) -> list[str]:
    """The compose file's gateway services, checked like the Deployments: the command is a
    workspace binary, its environment variables exist, its container ports are listeners'."""
    problems = []
    compose = yaml.safe_load(path.read_text())
    for service_name, service in compose.get("services", {}).items():
        if not str(service.get("image", "")).startswith("gateway:"):
            continue
        name = service["command"][0]
        if not (binaries / name).exists():
            problems.append(f"compose {service_name}: {name} is not a workspace binary")
            continue
        env = service.get("environment", {})
        # "[host:][host_port:]container_port": the container port is the last field.
        ports = {p: int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
        problems += env_and_port_problems(f"compose {service_name}", help_of(binaries, name), env, ports)
    return problems


def check_dockerfile(path: pathlib.Path) -> list[str]:
    """The image ships every binary the workspace builds, the data plane profile-guided: the
    build stage runs scripts/release.sh into /out and the image copies /out; release.sh copies
    control-plane and gatewayctl from the release build and the data plane that
    benches/load/pgo.sh built, which instruments it, trains it with the workspace's own load
    (benches/src/bin/train-load.rs, no nginx or wrk) and builds it from the profile."""
    root = path.parent.parent
    text = path.read_text()
    release = root / "scripts" / "release.sh"
    pgo = root / "benches" / "load" / "pgo.sh"
    problems = [
        f"{path}: {what}"
        for what, needle in (
            ("does not build with scripts/release.sh into /out", "OUT=/out scripts/release.sh"),
            ("does not ship /out", "COPY --from=build /out/"),
            ("has no llvm-profdata for the profile-guided build", "rustup component add llvm-tools"),
        )
        if needle not in text
    ]
    release_text = release.read_text() if release.exists() else ""
    problems += [
        f"{release}: does not ship {binary}"
        for binary in ("target/release/control-plane", "target/release/gatewayctl")
        if binary not in release_text
    ]
    if "benches/load/pgo.sh" not in release_text:
        problems.append(f"{release}: does not ship the profile-guided data plane")
    pgo_text = pgo.read_text() if pgo.exists() else ""
    problems += [
        f"{pgo}: has no {step}"
        for step in ("-Cprofile-generate", "target/release/train-load", "-Cprofile-use")
        if step not in pgo_text
    ]
    if not (root / "benches" / "src" / "bin" / "train-load.rs").exists():
        problems.append("benches/src/bin/train-load.rs (the training load) is missing")
    return problems


def check_against_binaries(rendered: list[str], binaries: pathlib.Path) -> list[str]:
    """What the manifests ask of the binaries that they do not offer: an environment variable
    their `--help` does not list, a container port that is not the one its listener's address
    names, a probe path the listener behind its port does not serve."""
    problems = []
    helps = {}
    # The same Deployment renders in every overlay: each (binary, port, paths) is probed once.
    probed = {}
    # How each binary is started for the probe check, and which printed URL serves which port.
    starts = {
        "data-plane": (["--listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0",
                        "--control-plane", "http://127.0.0.1:9"], {"status": "status_url"}),
        "control-plane": (["--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0",
                           "--database-url", "sqlite://{work}/probe.db?mode=rwc",
                           "--admin-token", "probe-check-token"], {"admin": "admin_url"}),
    }
    for path in rendered:
        for doc in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                name = container["command"][0]
                binary = binaries / name
                if name not in helps:
                    helps[name] = help_of(binaries, name)
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
                problems += env_and_port_problems(name, helps[name], env, ports)
                probes = {}
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    get = container.get(kind, {}).get("httpGet")
                    if get:
                        probes.setdefault(get["port"], set()).add(get["path"])
                args, urls = starts[name]
                for port_name, paths in probes.items():
                    if port_name not in urls:
                        problems.append(f"{name}: probes port {port_name}, which has no HTTP checks here")
                        continue
                    key = (name, port_name, frozenset(paths))
                    if key not in probed:
                        probed[key] = served_paths(binary, args, urls[port_name], paths)
                    for probe, status in probed[key].items():
                        if status is None or status == 404:
                            problems.append(f"{name}: probe {probe} on {port_name} is not served ({status})")
    return sorted(set(problems))


def main(root: str) -> int:
    failed = False
    manifests = []
    kustomizations = []
    binaries = pathlib.Path(BINARIES)
    for problem in check_dockerfile(pathlib.Path(root) / "Dockerfile"):
        print(problem)
        failed = True
    compose = pathlib.Path(root) / "compose" / "compose.yaml"
    for problem in check_compose(compose, binaries) if compose.exists() else ["no compose file"]:
        print(f"deploy/ asks what the binaries do not offer: {problem}")
        failed = True
    for path in sorted((pathlib.Path(root) / "kubernetes").rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        if path.name == "kustomization.yaml":
            kustomizations.append(path.parent)
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
    failed |= not validate(manifests)
    with tempfile.TemporaryDirectory() as out:
        rendered = []
        for folder in kustomizations:
            result = subprocess.run(
                ["kubectl", "kustomize", str(folder)], capture_output=True, text=True
            )
            if result.returncode != 0:
                print(f"{folder}: kubectl kustomize failed:\n{result.stderr}")
                failed = True
                continue
            target = pathlib.Path(out) / (str(folder).replace("/", "_") + ".yaml")
            target.write_text(result.stdout)
            rendered.append(str(target))
        if rendered:
            failed |= not validate(rendered)
            if (binaries / "data-plane").exists() and (binaries / "control-plane").exists():
                for problem in check_against_binaries(rendered, binaries):
                    print(f"deploy/ asks what the binaries do not offer: {problem}")
                    failed = True
            else:
                print(f"no binaries in {binaries}: flags, ports and probes not checked")
                failed = True
    print(
        f"{len(manifests)} manifest file(s), {len(kustomizations)} kustomization(s) rendered, "
        f"Kubernetes {KUBERNETES_VERSION}: {'FAILED' if failed else 'valid'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy"))
