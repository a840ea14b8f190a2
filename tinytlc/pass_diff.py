"""`tinytlc diff`: what each pass saves, planned from the graph and measured.

One row per step, cumulative: ORT's own training graph, then each training-graph pass in turn,
then the session settings compile chooses for the rewritten graph. Every row is compiled,
planned (runtime/plan.py: ORT's execution order and tensor sizes from a profiled step, lifetimes
to each tensor's last reader) and measured (runtime/memory.py: memray peak of a training step, each
row's session on its own in one fresh process; step time in another).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tinytlc.passes.training import DEFAULT_PASSES, PASSES
from tinytlc.pipeline import LEAN_SESSION, compile_model
from tinytlc.report import mib, table
from tinytlc.runtime.memory import measure_all
from tinytlc.runtime.plan import plan


def steps() -> list[tuple[str, list[str], dict]]:
    """(label, passes, session) per row: the default passes one by one, the session settings
    compile picks (= what `tinytlc compile` builds), then each optional pass on top."""
    rows = [("ORT training graph (no passes)", [], {})]
    rows += [(f"+ {name}", DEFAULT_PASSES[: i + 1], {}) for i, name in enumerate(DEFAULT_PASSES)]
    rows.append(("+ session: no memory pattern, no buffer reuse, denormals as zero (compile's default)", DEFAULT_PASSES,
                 dict(LEAN_SESSION)))
    for name in (p for p in PASSES if p not in DEFAULT_PASSES):
        rows.append((f"+ {name} (optional)", DEFAULT_PASSES + [name], dict(LEAN_SESSION)))
    return rows


def diff(model: str, method: str, *, num_classes: int | None = None, batch_size: int = 8, resolution: int = 224,
         measure_steps: int = 3, log=lambda s: None) -> list[dict]:
    rows, arts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, passes, session) in enumerate(steps()):
            art = compile_model(model, method, Path(tmp) / str(i), num_classes=num_classes, batch_size=batch_size,
                                resolution=resolution, passes=passes, session=session)
            planned = plan(art.path, art.manifest)
            arts.append(art.path)
            rows.append({"step": label, "passes": passes, "session": session,
                         "planned_peak_bytes": planned.peak_bytes, "planned_peak_at": planned.peak_node})
            log(f"{label}: planned {mib(planned.peak_bytes)} MiB")
        log("measuring every row (one process tracks memory, another times steps)")
        for row, measured in zip(rows, measure_all(arts, steps=measure_steps)):
            row.update(step_peak_bytes=measured["step_peak_bytes"], total_bytes=measured["total_bytes"],
                       step_seconds=measured["step_seconds"])
    return rows


def render(rows: list[dict]) -> str:
    out, prev, first = [], None, rows[0]
    for r in rows:
        saving = "-" if prev is None else f"{mib(prev['step_peak_bytes'] - r['step_peak_bytes'])}"
        out.append([r["step"], mib(r["planned_peak_bytes"]), mib(r["step_peak_bytes"]), saving,
                    f"{first['step_peak_bytes'] / r['step_peak_bytes']:.2f}x", f"{r['step_seconds'] * 1000:.0f}"])
        prev = r
    return table(["step", "planned peak MiB", "measured step peak MiB", "saved vs previous MiB", "vs ORT",
                  "step ms"], out)
