"""A small kustomize: renders deploy/ as `kubectl kustomize` does, so the manifest checks run
where kubectl is not installed.

It handles only what deploy/ uses: `resources` (files and directories), `configMapGenerator`
from files with a fixed name, strategic-merge `patches` matched by kind and name, and `images`.
Anything else raises NotImplementedError, so a new kustomize feature in deploy/ cannot be
rendered wrongly in silence; tests/test_deploy.py compares the output with kubectl's wherever
kubectl is installed.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import yaml

Doc = dict[str, Any]

_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "images"}
# Strategic-merge keys of the lists a patch of deploy/ may touch; other lists are replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _unsupported(what: str, keys: set[str], allowed: set[str]) -> None:
    if keys - allowed:
        raise NotImplementedError(f"{what}: {sorted(keys - allowed)} not supported by tests/kustomize.py")


def render(directory: Path) -> list[Doc]:
    """Every object the kustomization in `directory` builds, in no particular order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    _unsupported(str(directory), set(kustomization), _FIELDS)
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    docs.extend(_config_map(directory, spec) for spec in kustomization.get("configMapGenerator", []))
    for patch in kustomization.get("patches", []):
        docs = _apply_patch(docs, _load_patch(directory, patch))
    for image in kustomization.get("images", []):
        _set_image(docs, image)
    return docs


def _config_map(directory: Path, spec: dict[str, Any]) -> Doc:
    _unsupported("configMapGenerator", set(spec), {"name", "files", "options"})
    options = spec.get("options", {})
    _unsupported("configMapGenerator options", set(options), {"labels", "disableNameSuffixHash"})
    if not options.get("disableNameSuffixHash"):
        raise NotImplementedError("configMapGenerator: hashed names are not supported by tests/kustomize.py")
    data = {}
    for entry in spec.get("files", []):
        key, _, source = entry.rpartition("=")
        path = directory / source
        data[key or path.name] = path.read_text()
    metadata: dict[str, Any] = {"name": spec["name"]}
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _load_patch(directory: Path, entry: dict[str, Any]) -> Doc:
    _unsupported("patches entry", set(entry), {"path", "patch"})
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    return yaml.safe_load(text)


def _same_object(a: Doc, b: Doc) -> bool:
    return a["kind"] == b["kind"] and a["metadata"]["name"] == b["metadata"]["name"]


def _apply_patch(docs: list[Doc], patch: Doc) -> list[Doc]:
    targets = [doc for doc in docs if _same_object(doc, patch)]
    if len(targets) != 1:
        raise ValueError(f"patch of {patch['kind']}/{patch['metadata']['name']} matches {len(targets)} objects")
    if patch.get("$patch") == "delete":
        return [doc for doc in docs if doc is not targets[0]]
    _merge(targets[0], patch)
    return docs


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list):
            _merge_list(target.setdefault(key, []), value, MERGE_KEYS[key])
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _merge_list(items: list[dict[str, Any]], patches: list[dict[str, Any]], key: str) -> None:
    for patch in patches:
        found = [item for item in items if item.get(key) == patch[key]]
        if patch.get("$patch") == "delete":
            items[:] = [item for item in items if item.get(key) != patch[key]]
        elif found:
            _merge(found[0], patch)
        else:
            items.append(copy.deepcopy(patch))


def pod_containers(doc: Doc) -> Iterator[dict[str, Any]]:
    """The containers and init containers of a workload's pod template (none for other kinds)."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def split_image(image: str) -> tuple[str, str | None]:
    """(name, tag or None) of an image reference; digests are not used in deploy/."""
    if "@" in image:
        raise NotImplementedError("image digests are not supported by tests/kustomize.py")
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry port
        return image, None
    return name, tag


def _set_image(docs: list[Doc], spec: dict[str, Any]) -> None:
    _unsupported("images entry", set(spec), {"name", "newName", "newTag"})
    for doc in docs:
        for container in pod_containers(doc):
            name, tag = split_image(container["image"])
            if name == spec["name"]:
                name, tag = spec.get("newName", name), spec.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name
