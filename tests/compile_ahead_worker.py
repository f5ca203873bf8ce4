"""A worker's side of the compile helper, in a process of its own (``tests/test_compile_ahead.py``):
the tiny family on the CPU with its blocks and VAE decoder compiled (inductor's C++ backend), three
tiny loop jobs with a compile helper beside it. Prints one JSON line per job: wall time, this
process's compile counters, the helper's calls, the 1-loop's frames (as a .npy path).

Run as ``python compile_ahead_worker.py OUT_DIR`` with TORCHINDUCTOR_CACHE_DIR set to an empty folder;
``python compile_ahead_worker.py OUT_DIR first-use`` then runs one job as a worker that finds the
cache marked warm does: no helper, everything compiled on first use (from the helper's graphs).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(out: Path, first_use: bool = False) -> None:
    import numpy as np
    from PIL import Image

    from fploopd.bench.e2e import compile_counters, job_image, loop_spec
    from fploopd.engine import random_models as models
    from fploopd.engine.compile_ahead import CompileAhead, setup_for, warm_marker
    from fploopd.engine.vae_accel import VaeAccel
    from fploopd.media import MediaLimits, read_video
    from fploopd.pipelines import run_job

    comps = models.components("tiny", "cpu")
    comps.runner_options = comps.runner_options.replace(compile=True)
    comps.compile_vae = True
    comps.vae_accel = comps.vae_accel or VaeAccel(comps.vae)
    setup = setup_for(comps, room=None)
    ahead = CompileAhead(setup, marker=warm_marker(setup))
    if first_use:  # as ``compile_ahead.attach`` leaves a worker that finds its marker
        assert ahead.marker is not None and ahead.marker.exists(), "the cache is not marked warm"
        comps.vae_accel.compile()
    else:
        comps.compile_ahead = ahead
        comps.vae_accel.compile(ahead)
    spec = loop_spec(False)
    src = out / "in.png"
    Image.fromarray(job_image()).save(src)

    def job(n: int) -> None:
        if comps.compile_ahead is not None:
            ahead.begin_job()
        started = time.perf_counter()
        result = run_job(spec, {"image": src}, out / f"out{n}", name="t", seeds=[31337], components=comps,
                         work_dir=out / f"work{n}")  # fmt: skip
        wall = time.perf_counter() - started
        one = next(o for o in result.outputs if o.kind == "1loop")
        frames, _ = read_video(one.path, MediaLimits())
        np.save(out / f"frames{n}.npy", frames)
        row = {"job": n, "wall_s": round(wall, 2), "counters": compile_counters(), "calls": ahead.summary()["calls"],
               "active": len(ahead.active), "frames": str(out / f"frames{n}.npy"),
               "marker": str(ahead.marker), "cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], "marked": ahead.marker is not None and ahead.marker.exists()}  # fmt: skip
        print(json.dumps(row), flush=True)

    if first_use:
        job(4)
        return
    job(1)  # eager: the helper compiles meanwhile
    if not ahead.wait(timeout=1200):
        raise SystemExit("the compile helper did not finish")
    job(2)  # compiled, each graph from the helper's cache entries
    job(3)
    ahead.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), first_use=sys.argv[2:] == ["first-use"])
