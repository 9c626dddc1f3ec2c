"""The deployment files (infra/) stay in step with the code they run.

They cannot be run here (no Docker engine, no cluster), so this checks what can drift: every
manifest parses, every ``RELOOP_*`` variable they set is a real settings field with a valid
value, and every command they run is accepted by the ``reloop`` CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reloop.ops.cli import build_parser
from reloop.ops.settings import load_settings

INFRA = Path(__file__).resolve().parents[1] / "infra"


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(INFRA.rglob("*.y*ml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def containers(doc: dict) -> list[dict]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


def test_every_manifest_parses_and_names_its_kind():
    docs = documents()
    kinds = {d.get("kind") for _, d in docs if "kind" in d}
    assert {"StatefulSet", "Job", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service"} <= kinds
    names = {d["metadata"]["name"] for _, d in docs if d.get("kind") == "StatefulSet"}
    assert names == {"reloop-worker", "reloop-trainer"}


def test_settings_in_manifests_are_real_fields():
    env: dict[str, str] = {}
    for name, doc in documents():
        if doc.get("kind") in ("ConfigMap", "Secret"):
            env.update({k: str(v) for k, v in (doc.get("data") or doc.get("stringData") or {}).items()})
        for c in containers(doc):
            env.update({e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e})
        for svc in (doc.get("services") or {}).values():
            env.update({k: str(v) for k, v in (svc.get("environment") or {}).items()})
    reloop = {k: v for k, v in env.items() if k.startswith("RELOOP_")}
    assert len(reloop) >= 5
    for key, value in reloop.items():  # one at a time, so a failure names the variable
        section, _, field = key.removeprefix("RELOOP_").lower().partition("__")
        settings = load_settings(env={key: value})
        assert hasattr(getattr(settings, section), field), key


@pytest.mark.parametrize("name,argv", [
    (name, argv) for name, doc in documents()
    for argv in [c.get("args") for c in containers(doc)] + [s.get("command") for s in (doc.get("services") or {}).values()]
    if argv and argv[0] != "CMD-SHELL"])
def test_commands_in_manifests_parse(name, argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0], name


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def k8s(kind: str, name: str) -> dict:
    return next(d for _, d in documents() if d.get("kind") == kind and d["metadata"]["name"] == name)


def test_workers_listen_on_every_interface_for_probes():
    services = compose()["services"]
    for name in ("worker-1", "worker-2"):
        assert services[name]["environment"]["RELOOP_WORKER__WEB_BIND"] == "0.0.0.0", name
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), "publish on the host's loopback"
    assert k8s("ConfigMap", "reloop-config")["data"]["RELOOP_WORKER__WEB_BIND"] == "0.0.0.0"
    assert load_settings(env={}).worker.web_bind == "127.0.0.1"  # `reloop run` / dev default


def test_cold_start_runs_before_workers_and_trainer():
    services = compose()["services"]
    boot = services["bootstrap"]["command"]
    assert boot[:2] == ["train", "--from-log"]
    assert services["bootstrap"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    for name in ("worker-1", "worker-2", "trainer"):
        assert services[name]["depends_on"] == {"bootstrap": {"condition": "service_completed_successfully"}}, name
    job = k8s("Job", "reloop-bootstrap")["spec"]["template"]["spec"]
    assert [c["args"][:2] for c in job["initContainers"]] == [["topics", "create"]]
    assert [c["args"][:2] for c in job["containers"]] == [["train", "--from-log"]]
    log_path = job["containers"][0]["args"][2]
    mounts = {m["mountPath"] for m in job["containers"][0]["volumeMounts"]}
    assert any(log_path.startswith(m + "/") for m in mounts), "the log must be on a mounted volume"
    assert "/var/lib/reloop/models" in mounts


def readme_steps() -> list[tuple[dict[str, str], list[str]]]:
    """``(env, argv)`` of each ``reloop`` line in infra/README.md's code blocks (``VAR=x`` prefixes
    and ``export VAR=x`` lines go to env; comments dropped)."""
    steps, env, in_block = [], {}, False
    text = (INFRA / "README.md").read_text().replace("\\\n", " ")  # shell line continuations
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        words = line.split("#")[0].split()
        if not in_block or not words:
            continue
        if words[0] == "export":
            env.update(w.split("=", 1) for w in words[1:])
            continue
        prefix = {}
        while words and "=" in words[0]:
            k, v = words.pop(0).split("=", 1)
            prefix[k] = v
        if words and words[0] == "reloop":
            steps.append(({**env, **prefix}, words[1:]))
    return steps


def test_infra_readme_steps_are_the_compose_services_in_order():
    """The README's steps (also the top README's "Production cluster") match docker-compose.yml
    line for line: same commands, same order, same settings; every one parses."""
    services = compose()["services"]
    order = ["topics", "bootstrap-log", "bootstrap", "worker-1", "trainer"]
    steps = readme_steps()
    assert [argv for _, argv in steps] == [services[name]["command"] for name in order]
    for (env, argv), name in zip(steps, order):
        assert build_parser().parse_args(argv).command == argv[0]
        want = {**image_env(), **{k: str(v) for k, v in (services[name].get("environment") or {}).items()}}
        assert {k: v for k, v in env.items() if k.startswith("RELOOP_")} == want, name


def image_env() -> dict[str, str]:
    """``ENV K=V`` settings of infra/Dockerfile (every container starts with them)."""
    out = {}
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            out.update(w.split("=", 1) for w in line.split()[1:])
    return out
