"""What a bench run prints: one line a row as it is timed, the Markdown tables of rows and of peer ratios, and
the report (the method in a paragraph, then the tables)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd


def peer_ratio(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    both = "images_per_s" in ours and "images_per_s" in peer
    return {
        "peer": peer["name"],
        "mode": ours["mode"],
        "precision": ours["precision"],
        "channels_last": ours["channels_last"],
        "compile": ours["compile"],
        "cudnn_benchmark": ours.get("cudnn_benchmark"),
        "tf32": ours.get("tf32"),
        "batch": ours["batch"],
        "ours_images_per_s": ours.get("images_per_s"),
        "peer_images_per_s": peer.get("images_per_s"),
        "speed_ratio": ours["images_per_s"] / peer["images_per_s"] if both else None,
        "ours_macs": ours.get("macs"),
        "peer_macs": peer.get("macs"),
        "ours_peak_memory_mb": ours.get("peak_memory_mb"),
        "peer_peak_memory_mb": peer.get("peak_memory_mb"),
    }


def _num(value: Any, fmt: str, missing: str = "–") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def precision_label(row: dict[str, Any]) -> str:
    """The row's precision, fp32 marked "(TF32 on)" where its convolutions may run in TF32 (a GPU's default)."""
    return row["precision"] + (" (TF32 on)" if row["precision"] == "fp32" and row.get("tf32") else "")


def format_row(row: dict[str, Any]) -> str:
    head = f"{row['name']} [{row['mode']} {precision_label(row)}{' cl' if row['channels_last'] else ''}"
    head += f"{' compiled' if row['compile'] else ''}, batch {row['batch']}]"
    if "error" in row:
        return f"{head}: FAILED ({row['error']})"
    return (
        f"{head}: {row['images_per_s']:.2f} img/s, latency {row['latency_ms']:.1f} ms "
        f"(p90 {row['latency_p90_ms']:.1f}), peak {_num(row['peak_memory_mb'], '.0f')} MiB, "
        f"{row['macs'] / 1e9:.1f} GMACs/img"
    )


def _mode(row: dict[str, Any]) -> str:
    parts = [row["mode"], precision_label(row)]
    parts += ["channels-last"] * bool(row["channels_last"]) + ["compiled"] * bool(row["compile"])
    return " ".join(parts + ["cudnn-autotuned"] * bool(row.get("cudnn_benchmark")))


def _giga(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def bench_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows of a bench run as a display frame (strings, fixed digits)."""
    gpu = any(r.get("mfu") is not None for r in rows)
    out = []
    for r in rows:
        row = {"Config": r["name"], "Mode": _mode(r), "Batch": str(r["batch"])}
        failed = "error" in r
        row["Images/s"] = f"failed: {r['error']}" if failed else f"{r['images_per_s']:.2f}"
        row["Latency ms (median / p90)"] = "" if failed else f"{r['latency_ms']:.1f} / {r['latency_p90_ms']:.1f}"
        row["Peak memory MiB"] = "" if failed else _num(r["peak_memory_mb"], ".0f")
        row["Params M"] = f"{r['params'] / 1e6:.1f}"
        row["GMACs/img"] = _num(_giga(r.get("macs")), ".1f")
        if gpu:
            row["MFU"] = "" if failed else f"{_num(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')} %"
        out.append(row)
    return pd.DataFrame(out)


def peer_frame(ratios: Sequence[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "Peer": q["peer"],
                "Mode": _mode(q),
                "Batch": str(q["batch"]),
                "Ours img/s": _num(q["ours_images_per_s"], ".2f"),
                "Peer img/s": _num(q["peer_images_per_s"], ".2f"),
                "Ours / peer": f"**{_num(q['speed_ratio'], '.3f')}**",
                "GMACs ours / peer": f"{_num(_giga(q['ours_macs']), '.1f')} / {_num(_giga(q['peer_macs']), '.1f')}",
                "Peak MiB ours / peer": (
                    f"{_num(q['ours_peak_memory_mb'], '.0f')} / {_num(q['peer_peak_memory_mb'], '.0f')}"
                ),
            }
            for q in ratios
        ]
    )


def _tf32(state: dict[str, bool] | None) -> str:
    if not state:
        return "n/a"
    return ", ".join(f"{k} {'on' if v else 'off'}" for k, v in state.items())


def format_table(result: dict[str, Any]) -> str:
    from ablations.results.tables import render

    env = result["environment"]
    lines = [render(bench_frame(result["rows"]), "md")]
    if result["peer_ratios"]:
        lines += [
            "",
            "Ours against each peer, same process, same settings (ratio > 1: ours is faster):",
            "",
            render(peer_frame(result["peer_ratios"]), "md"),
        ]
    versions = ", ".join(f"{k} {_tf32(v) if k == 'tf32' else v}" for k, v in env.items() if k != "device")
    return f"Device: {env['device']} ({versions})\n\n" + "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    size = result.get("input_size")
    methods = result.get("methods") or []
    first = methods[0] if methods else {}
    intro = (
        f"Input {size[0]}×{size[1]} random images, resident on the device (data loading and host-to-device copies "
        "excluded; the final resize to the input size included). "
        f"{first.get('warmup', '?')} untimed warm-up steps, then {first.get('repeats', '?')} repeats of "
        f"{first.get('iters', '?')} steps, each step between two device synchronisations; images/s is the median "
        "over repeats, latency the median and 90th percentile over steps. Rows compared with each other (one "
        "config plain and fast, ours and a peer) are timed interleaved, repeat by repeat. GMACs: one forward pass "
        "of one image. Peak memory: on a GPU the weights and inputs plus the largest rise of "
        "`max_memory_allocated` during the steps; on a CPU the resident memory the steps add above what was "
        "resident before them (weights and inputs excluded)."
        if size
        else ""
    )
    return (f"{intro}\n\n" if intro else "") + format_table(result)
