"""``layertrace env``: versions, device, threads, and which embedded datasets / models are installed.

    layertrace env           human-readable report
    layertrace env --json    the same as one JSON object (``versions``, ``device``, ``assets``)
    layertrace env --models  also build the tiny model of every family in the zoo and run adapt()'s
                             self-check on it: which Hugging Face families this install verifies (~20 s)

Exit code 0 even when assets are missing (the report says how to get them); ``--strict`` exits 1
when any embedded asset is absent (for setup checks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata

HELP = "versions, device, threads, and which embedded datasets / models are installed"

PACKAGES = ("torch", "transformers", "accelerate", "numpy", "tokenizers", "safetensors", "datasets")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--strict", action="store_true", help="exit 1 if an embedded dataset or model is missing")
    parser.add_argument("--models", action="store_true",
                        help="self-check a tiny model of every family in the zoo (docs/models.md) and list them")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """The environment report as a JSON-able dict: versions, device, threads, embedded assets."""
    import torch

    from .. import __version__
    from ..data import embedded_assets

    versions: dict[str, str | None] = {"layertrace": __version__, "python": platform.python_version()}
    versions["torch"] = torch.__version__
    try:  # imported here only: the real import proves the installed transformers works
        import transformers

        versions["transformers"] = transformers.__version__
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        versions["transformers"] = f"unusable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    for package in PACKAGES:
        if package not in versions:
            versions[package] = _version(package)
    cuda = torch.cuda.is_available()
    device = {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_version": torch.version.cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "default_device": "cuda" if cuda else "cpu",
    }
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    threads = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
               "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus}
    env_vars = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "OMP_NUM_THREADS")}
    return {"versions": versions, "device": device, "threads": threads, "environment": env_vars,
            "platform": platform.platform(), "assets": embedded_assets()}


def format_report(report: dict) -> str:
    """The human-readable text of :func:`collect`'s dict."""
    v, d, t = report["versions"], report["device"], report["threads"]
    lines = ["layertrace environment", ""]
    width = max(map(len, v))
    lines += [f"  {name:<{width}}  {value if value is not None else 'not installed'}" for name, value in v.items()]
    lines.append("")
    if d["cuda_available"]:
        lines.append(f"  device: cuda ({', '.join(d['cuda_devices'])}; CUDA {d['cuda_version']})")
    else:
        lines.append("  device: cpu (no CUDA GPU visible)" + ("; Apple MPS available" if d["mps_available"] else ""))
    lines.append(f"  threads: torch {t['torch_threads']} intra-op / {t['torch_interop_threads']} inter-op; "
                 f"{t['usable_cpus']} usable of {t['cpu_count']} CPUs")
    offline = report["environment"].get("HF_HUB_OFFLINE")
    lines.append(f"  HF_HUB_OFFLINE={offline if offline is not None else '(unset)'}")
    lines += ["", "embedded datasets / models:"]
    width = max(len(a["name"]) for a in report["assets"])
    for a in report["assets"]:
        if a["present"]:
            lines.append(f"  {a['name']:<{width}}  present  {a['path']}")
        else:
            lines.append(f"  {a['name']:<{width}}  MISSING  {a['hint']}")
    return "\n".join(lines)


def format_models(rows: list[dict]) -> str:
    """The ``--models`` table: one line per zoo family."""
    served = sum(r["status"] == "verified" for r in rows)
    lines = ["", f"model families (tiny config-built models, adapt() self-check): {served} verified, "
                 f"{sum(r['status'] == 'refused' for r in rows)} refused, {sum(r['status'] == 'FAILED' for r in rows)} failed"]
    width = max(len(r["name"]) for r in rows)
    cls_width = max(len(r["model_class"]) for r in rows)
    for r in rows:
        lines.append(f"  {r['name']:<{width}}  {r['model_class']:<{cls_width}}  {r['status']:<8}  {r['detail']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    if getattr(args, "models", False):
        from ..models.zoo import verify_zoo

        report["models"] = verify_zoo()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report) + (format_models(report["models"]) if "models" in report else ""))
    missing = [a["name"] for a in report["assets"] if not a["present"]]
    if args.strict and missing:
        print(f"layertrace env: missing embedded assets: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
