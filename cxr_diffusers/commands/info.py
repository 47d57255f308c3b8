"""`cxr-diffusers info`: a model's components, parameter counts, memory footprint and config."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a saved pipeline (components, parameters, memory)")
    parser.add_argument("model", help="model folder or Hub id")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)


def describe_pipeline(pipe) -> dict:
    """Components, trainable/total parameters, weight memory and config of each component."""
    import torch

    components = {}
    for name, component in pipe.components.items():
        if component is None:  # an optional component the pipeline has not got (super_resolution)
            continue
        entry = {"class": type(component).__name__}
        if isinstance(component, torch.nn.Module):
            params = list(component.parameters())
            entry["parameters"] = sum(p.numel() for p in params)
            entry["trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)
            entry["memory_mb"] = round(
                sum(t.numel() * t.element_size() for t in list(params) + list(component.buffers())) / 2**20, 2
            )
            entry["dtype"] = str(next(iter(params)).dtype).replace("torch.", "") if params else None
        if hasattr(component, "config"):
            entry["config"] = {k: v for k, v in dict(component.config).items() if not k.startswith("_")}
        if name == "tokenizer":
            entry["vocab_size"] = len(component)
        components[name] = entry
    total = sum(c.get("parameters", 0) for c in components.values())
    return {
        "components": components,
        "total_parameters": total,
        "total_memory_mb": round(sum(c.get("memory_mb", 0) for c in components.values()), 2),
        "default_size": pipe.default_size,
        "size_multiple": pipe.size_multiple,
    }


def run(args: argparse.Namespace) -> int:
    from ..pipelines import CXRPipeline

    info = describe_pipeline(CXRPipeline.from_pretrained(args.model))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{args.model}: default size {info['default_size']}x{info['default_size']} "
          f"(sizes: multiples of {info['size_multiple']})")
    print(f"{'component':<14}{'class':<30}{'params':>14}{'trainable':>14}{'MB':>10}")
    for name, entry in info["components"].items():
        if "parameters" in entry:
            print(f"{name:<14}{entry['class']:<30}{entry['parameters']:>14,}{entry['trainable_parameters']:>14,}"
                  f"{entry['memory_mb']:>10.1f}")
        else:
            print(f"{name:<14}{entry['class']:<30}")
    print(f"{'total':<44}{info['total_parameters']:>14,}{'':>14}{info['total_memory_mb']:>10.1f}")
    return 0
