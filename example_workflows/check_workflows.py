"""Validates the example workflows against a running ComfyUI server.

    python example_workflows/check_workflows.py --server http://127.0.0.1:8188 [FILES...]

FILES default to every `*_api.json` in this folder (with its graph-format twin `<name>.json`).
For each workflow:

1. API format (`<name>_api.json`): every node's class_type is in `/object_info`; every required input
   is given, no unknown input is; a link points at an existing node and output slot whose type fits
   the input; a widget value has the input's type and range, and a COMBO value is one of its options
   (file names the server lacks — model files, images — are reported as "needs file", not errors).
2. Graph format (`<name>.json`, what the frontend loads): links agree with the nodes' input/output
   slots and types; `widgets_values` has the length the frontend expects (a seed's "control after
   generate" value and LoadImage's upload widget count) and, mapped onto the node's widget inputs in
   order, gives exactly the inputs of the API file.
3. Server validation: the API prompt is POSTed to `/prompt`, which validates without running when an
   input is invalid; since model files are missing here, the only errors allowed are missing files
   (`value_not_in_list` on a file name). Skipped for a workflow whose files all exist (the server
   would run it) or with --no-post.

The jaxdiff nodes must be registered on the server (the pack in custom_nodes/); with
--allow-missing-jaxdiff, unregistered ones are checked against the spec below instead. Stdlib only.
Exit status 0 when every workflow passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
FILE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".png", ".jpg", ".jpeg",
                 ".webp", ".mp4", ".webm", ".wav", ".flac", ".orbax", ".json")

# What the jaxdiff nodes declare (comfy_nodes/nodes.py; used only with --allow-missing-jaxdiff, when the
# server has not registered them).
_FILES: list = []  # file lists: any name is "needs file"
JAXDIFF_SPEC = {
    "JaxDiffusionModelLoader": {
        "input": {"required": {
            "unet_name": [_FILES],
            "weight_dtype": [["default", "bf16", "fp32"]],
            "mesh": ["STRING", {"default": ""}],
            "attention": [["auto", "xla", "cudnn", "splash"]],
        }},
        "input_order": {"required": ["unet_name", "weight_dtype", "mesh", "attention"]},
        "output": ["MODEL"],
    },
    "JaxVAELoader": {
        "input": {"required": {"vae_name": [_FILES]}},
        "input_order": {"required": ["vae_name"]},
        "output": ["VAE"],
    },
    "JaxCLIPLoader": {
        "input": {"required": {
            "clip_name": [_FILES], "type": [["wan"]], "weight_dtype": [["default", "bf16", "fp32"]],
            "mesh": ["STRING", {"default": ""}],
        }},
        "input_order": {"required": ["clip_name", "type", "weight_dtype", "mesh"]},
        "output": ["CLIP"],
    },
    "JaxDualCLIPLoader": {
        "input": {"required": {
            "clip_name1": [_FILES], "clip_name2": [_FILES], "type": [["flux"]],
            "weight_dtype": [["default", "bf16", "fp32"]], "mesh": ["STRING", {"default": ""}],
        }},
        "input_order": {"required": ["clip_name1", "clip_name2", "type", "weight_dtype", "mesh"]},
        "output": ["CLIP"],
    },
    "JaxCLIPVisionLoader": {
        "input": {"required": {"clip_name": [_FILES]}},
        "input_order": {"required": ["clip_name"]},
        "output": ["CLIP_VISION"],
    },
    "JaxSampler": {
        "input": {
            "required": {
                "model": ["MODEL"], "positive": ["CONDITIONING"], "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"], "seed": ["INT", {"min": 0, "control_after_generate": True}],
                "steps": ["INT", {"min": 1}], "cfg": ["FLOAT", {"min": 0.0}], "guidance": ["FLOAT", {"min": -1.0}],
                "shift": ["FLOAT", {"min": 0.0}],
                "sampler_name": [["euler", "unipc"]], "denoise": ["FLOAT", {"min": 0.0, "max": 1.0}],
            },
            "optional": {"model_2": ["MODEL"], "boundary": ["FLOAT", {"min": 0.0, "max": 1.0}]},
        },
        "input_order": {
            "required": ["model", "positive", "negative", "latent_image", "seed", "steps", "cfg", "guidance", "shift",
                         "sampler_name", "denoise"],
            "optional": ["model_2", "boundary"],
        },
        "output": ["LATENT"],
    },
}


# ----------------------------------------------------------------------------------------- helpers


def http_json(url, data=None, timeout=60):
    """(status, parsed JSON body) of a GET, or a POST when `data` is given."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def input_specs(info):
    """[(name, spec, required)] of a node's inputs in the node's order (required, then optional)."""
    inputs, order = info.get("input", {}), info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        specs = inputs.get(section, {}) or {}
        names = order.get(section) or list(specs)
        out += [(name, specs[name], section == "required") for name in names if name in specs]
    return out


def spec_type(spec):
    """(type, options or None, extra dict) of an input spec: COMBO for a list or a V3 "COMBO"."""
    t = spec[0]
    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(t, list):
        return "COMBO", t, extra
    if t == "COMBO":
        return "COMBO", list(extra.get("options", [])), extra
    return t, None, extra


def is_widget(spec):
    t, _, extra = spec_type(spec)
    return t in WIDGET_TYPES and not extra.get("forceInput")


def widget_slots(class_type, name, spec):
    """Values the frontend stores in widgets_values for one widget input (1, or 2 with an extra widget)."""
    t, _, extra = spec_type(spec)
    n = 1
    control = extra.get("control_after_generate")
    if control is None:  # the frontend's legacy convention: an INT named seed/noise_seed gets a control
        control = t == "INT" and name in ("seed", "noise_seed")
    if control:
        n += 1
    if extra.get("image_upload") or extra.get("video_upload") or extra.get("audio_upload"):
        n += 1
    return n


def types_fit(received, expected):
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def looks_like_file(value):
    return isinstance(value, str) and value.lower().endswith(FILE_SUFFIXES)


class Report:
    def __init__(self, name):
        self.name, self.errors, self.notes = name, [], []

    def error(self, msg):
        self.errors.append(msg)

    def note(self, msg):
        self.notes.append(msg)


# ----------------------------------------------------------------------------------------- API format


def check_value(rep, where, spec, value):
    """Checks one widget value against its spec; returns True when the value is a missing file name."""
    t, options, extra = spec_type(spec)
    if t == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            rep.error(f"{where}: INT expected, got {value!r}")
            return False
    elif t == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            rep.error(f"{where}: FLOAT expected, got {value!r}")
            return False
    elif t == "STRING":
        if not isinstance(value, str):
            rep.error(f"{where}: STRING expected, got {value!r}")
        return False
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            rep.error(f"{where}: BOOLEAN expected, got {value!r}")
        return False
    elif t == "COMBO":
        if value in options:
            return False
        if looks_like_file(value):
            rep.note(f"{where}: needs file {value!r}")
            return True
        rep.error(f"{where}: {value!r} is not one of {options[:12]}")
        return False
    if t in ("INT", "FLOAT"):
        if "min" in extra and value < extra["min"]:
            rep.error(f"{where}: {value} < min {extra['min']}")
        if "max" in extra and value > extra["max"]:
            rep.error(f"{where}: {value} > max {extra['max']}")
    return False


def check_api(rep, prompt, object_info):
    """Static checks of an API-format prompt; returns the ids of nodes whose own inputs name a missing file."""
    missing_file_nodes = set()
    if not isinstance(prompt, dict) or not prompt:
        rep.error("API file is not a non-empty object of nodes")
        return missing_file_nodes
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        info = object_info.get(class_type)
        where = f"node {node_id} ({class_type})"
        if info is None:
            rep.error(f"{where}: class_type not in /object_info")
            continue
        given = node.get("inputs", {})
        specs = {name: (spec, required) for name, spec, required in input_specs(info)}
        hidden = set((info.get("input", {}).get("hidden") or {}))
        for name in given:
            if name not in specs and name not in hidden:
                rep.error(f"{where}: unknown input {name!r}")
        for name, (spec, required) in specs.items():
            if name not in given:
                if required:
                    rep.error(f"{where}: required input {name!r} missing")
                continue
            value = given[name]
            t, _, _ = spec_type(spec)
            if is_link(value):
                src_id, slot = value
                src = prompt.get(src_id)
                if src is None:
                    rep.error(f"{where}.{name}: links to missing node {src_id}")
                    continue
                src_info = object_info.get(src.get("class_type"))
                if src_info is None:
                    continue  # reported at that node
                outputs = src_info.get("output", [])
                if not 0 <= slot < len(outputs):
                    rep.error(f"{where}.{name}: node {src_id} has no output slot {slot}")
                elif not types_fit(outputs[slot], t):
                    rep.error(f"{where}.{name}: expects {t}, node {src_id} slot {slot} gives {outputs[slot]}")
            elif t in WIDGET_TYPES:
                if check_value(rep, f"{where}.{name}", spec, value):
                    missing_file_nodes.add(node_id)
            else:
                rep.error(f"{where}.{name}: {t} must be a link [node_id, slot], got {value!r}")
    if not any(object_info.get(n.get("class_type"), {}).get("output_node") for n in prompt.values()):
        rep.error("no output node")
    return missing_file_nodes


# ----------------------------------------------------------------------------------------- graph format


def check_ui(rep, graph, prompt, object_info):
    """Checks a graph-format workflow and that it maps onto the API prompt input for input."""
    if graph.get("version") != 0.4 or not isinstance(graph.get("nodes"), list):
        rep.error("graph: expected a version 0.4 workflow with a nodes list")
        return
    nodes = {n["id"]: n for n in graph["nodes"]}
    links = {}
    for link in graph.get("links", []):
        if not (isinstance(link, list) and len(link) == 6):
            rep.error(f"graph: malformed link {link!r}")
            continue
        links[link[0]] = link
    if nodes and graph.get("last_node_id", 0) < max(nodes):
        rep.error("graph: last_node_id below the largest node id")
    if links and graph.get("last_link_id", 0) < max(links):
        rep.error("graph: last_link_id below the largest link id")

    for link_id, (_, src, src_slot, dst, dst_slot, type_) in links.items():
        where = f"graph link {link_id}"
        if src not in nodes or dst not in nodes:
            rep.error(f"{where}: names a missing node")
            continue
        outs, ins = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
        if not 0 <= src_slot < len(outs) or link_id not in (outs[src_slot].get("links") or []):
            rep.error(f"{where}: node {src} output {src_slot} does not list it")
        elif not types_fit(outs[src_slot]["type"], type_):
            rep.error(f"{where}: type {type_} but node {src} output {src_slot} is {outs[src_slot]['type']}")
        if not 0 <= dst_slot < len(ins) or ins[dst_slot].get("link") != link_id:
            rep.error(f"{where}: node {dst} input {dst_slot} does not hold it")
        elif not types_fit(type_, ins[dst_slot]["type"]):
            rep.error(f"{where}: type {type_} but node {dst} input {dst_slot} is {ins[dst_slot]['type']}")
    for n in nodes.values():
        for i, inp in enumerate(n.get("inputs", [])):
            if inp.get("link") is not None and inp["link"] not in links:
                rep.error(f"graph node {n['id']} input {i}: link {inp['link']} not in links")
        for o in n.get("outputs", []):
            for lid in o.get("links") or []:
                if lid not in links:
                    rep.error(f"graph node {n['id']} output {o['name']}: link {lid} not in links")

    derived = {}
    for n in nodes.values():
        class_type = n.get("type")
        if class_type in FRONTEND_ONLY:
            continue
        where = f"graph node {n['id']} ({class_type})"
        info = object_info.get(class_type)
        if info is None:
            rep.error(f"{where}: type not in /object_info")
            continue
        if n.get("mode", 0) != 0:
            continue  # muted/bypassed nodes are not sent
        widgets = [(name, spec) for name, spec, _ in input_specs(info) if is_widget(spec)]
        values = list(n.get("widgets_values") or [])
        expected = sum(widget_slots(class_type, name, spec) for name, spec in widgets)
        if len(values) != expected:
            rep.error(f"{where}: {len(values)} widgets_values, the frontend expects {expected} "
                      f"({[name for name, _ in widgets]})")
            derived[str(n["id"])] = None  # reported; not compared
            continue
        inputs, pos = {}, 0
        for name, spec in widgets:
            inputs[name] = values[pos]
            pos += widget_slots(class_type, name, spec)
        out_types = info.get("output", [])
        if [o["type"] for o in n.get("outputs", [])] != list(out_types):
            rep.error(f"{where}: outputs {[o['type'] for o in n.get('outputs', [])]} != server's {out_types}")
        specs = {name: spec for name, spec, _ in input_specs(info)}
        for inp in n.get("inputs", []):
            if inp["name"] not in specs:
                rep.error(f"{where}: input {inp['name']!r} is not the node's")
                continue
            if inp.get("link") is None:
                continue
            link = links.get(inp["link"])
            if link is None:
                continue
            src = nodes.get(link[1])
            if src is not None and src.get("type") in FRONTEND_ONLY:
                rep.error(f"{where}: input {inp['name']} fed by a frontend-only node")
            inputs[inp["name"]] = [str(link[1]), link[2]]
        derived[str(n["id"])] = {"class_type": class_type, "inputs": inputs}

    if prompt is None:
        return
    if set(derived) != set(prompt):
        rep.error(f"graph vs API: node ids differ: graph {sorted(derived)} API {sorted(prompt)}")
    for node_id in sorted(set(derived) & set(prompt), key=int):
        a, b = derived[node_id], prompt[node_id]
        if a is None:
            continue
        if a["class_type"] != b.get("class_type"):
            rep.error(f"graph vs API node {node_id}: {a['class_type']} != {b.get('class_type')}")
        elif a["inputs"] != b.get("inputs"):
            diff = {k: (a["inputs"].get(k), b.get("inputs", {}).get(k))
                    for k in set(a["inputs"]) | set(b.get("inputs", {}))
                    if a["inputs"].get(k) != b.get("inputs", {}).get(k)}
            rep.error(f"graph vs API node {node_id} ({a['class_type']}): inputs differ (graph, API): {diff}")


# ----------------------------------------------------------------------------------------- server validation


def upstream(prompt, node_id, seen=None):
    seen = set() if seen is None else seen
    if node_id in seen or node_id not in prompt:
        return seen
    seen.add(node_id)
    for v in prompt[node_id].get("inputs", {}).values():
        if is_link(v):
            upstream(prompt, v[0], seen)
    return seen


def server_validate(rep, base, prompt, object_info, missing_file_nodes):
    outputs = [i for i, n in prompt.items() if object_info.get(n.get("class_type"), {}).get("output_node")]
    if not all(upstream(prompt, o) & missing_file_nodes for o in outputs):
        rep.note("server validation skipped: its model files exist, so /prompt would run it")
        return
    status, body = http_json(f"{base}/prompt", {"prompt": prompt, "client_id": "check_workflows"})
    if status == 200:  # should not happen (a file is missing); take it off the queue again
        pid = body.get("prompt_id") if isinstance(body, dict) else None
        http_json(f"{base}/queue", {"delete": [pid]})
        rep.error(f"/prompt accepted the workflow although files are missing (removed from the queue: {pid})")
        return
    if not isinstance(body, dict) or "node_errors" not in body:
        rep.error(f"/prompt answered {status}: {str(body)[:500]}")
        return
    for node_id, entry in body["node_errors"].items():
        for err in entry.get("errors", []):
            info = err.get("extra_info", {})
            if err.get("type") == "value_not_in_list" and looks_like_file(info.get("received_value")):
                continue
            # LoadImage checks its file itself (VALIDATE_INPUTS): "Invalid image file: example.png"
            if (err.get("type") == "custom_validation_failed" and "invalid image file" in
                    f"{err.get('message')} {err.get('details', '')}".lower()):
                continue
            rep.error(f"/prompt: node {node_id} ({entry.get('class_type')}): {err.get('type')}: "
                      f"{err.get('message')} {err.get('details', '')}".rstrip())
    top = body.get("error", {})
    if top.get("type") not in (None, "prompt_outputs_failed_validation"):
        rep.error(f"/prompt: {top.get('type')}: {top.get('message')} {top.get('details', '')}")
    elif not rep.errors:
        rep.note("/prompt validation: only missing model files reported")


# ----------------------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI base URL")
    ap.add_argument("files", nargs="*", help="API-format workflows (default: every *_api.json here)")
    ap.add_argument("--no-post", action="store_true", help="skip validating through POST /prompt")
    ap.add_argument("--allow-missing-jaxdiff", action="store_true",
                    help="check unregistered jaxdiff nodes against this script's copy of their spec")
    args = ap.parse_args(argv)
    base = args.server.rstrip("/")

    status, object_info = http_json(f"{base}/object_info")
    if status != 200 or not isinstance(object_info, dict):
        print(f"cannot read {base}/object_info ({status})", file=sys.stderr)
        return 2
    unregistered = [name for name in JAXDIFF_SPEC if name not in object_info]
    if unregistered:
        if not args.allow_missing_jaxdiff:
            print(f"jaxdiff nodes not registered on the server: {unregistered} "
                  "(is the pack in custom_nodes/? see the server log; --allow-missing-jaxdiff to go on)",
                  file=sys.stderr)
            return 2
        print(f"WARNING: {unregistered} not registered; checked against the spec in this script, "
              "and the server validation of their inputs is skipped")
        object_info = {**object_info, **{name: JAXDIFF_SPEC[name] for name in unregistered}}
        args.no_post = True

    files = [Path(f) for f in args.files] or sorted(HERE.glob("*_api.json"))
    if not files:
        print("no workflows to check", file=sys.stderr)
        return 2
    failed = 0
    for api_path in files:
        rep = Report(api_path.name)
        try:
            prompt = json.loads(api_path.read_text())
        except (OSError, ValueError) as e:
            rep.error(f"cannot read: {e}")
            prompt = None
        missing = check_api(rep, prompt, object_info) if prompt is not None else set()
        ui_path = api_path.with_name(api_path.name.replace("_api.json", ".json"))
        if ui_path != api_path and ui_path.exists():
            try:
                check_ui(rep, json.loads(ui_path.read_text()), prompt, object_info)
            except (ValueError, KeyError, TypeError) as e:
                rep.error(f"{ui_path.name}: malformed graph ({type(e).__name__}: {e})")
        else:
            rep.note(f"no graph-format twin {ui_path.name}")
        if prompt is not None and not rep.errors and not args.no_post:
            server_validate(rep, base, prompt, object_info, missing)
        ok = not rep.errors
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {api_path.name}" + (f" + {ui_path.name}" if ui_path.exists() else ""))
        for msg in rep.errors:
            print(f"  ERROR {msg}")
        for msg in rep.notes:
            print(f"  note  {msg}")
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
