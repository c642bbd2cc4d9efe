"""Replica renderer benchmark: build time and fidelity, CPU fps on one core, gsplat when CUDA exists.

    python -m bench.renderer --out bench/results/renderer.json

* Builds the default replica from ``skimage.data.astronaut()`` into a temporary store (fresh, timed;
  2 CPU threads, as on the dev box) and measures the face-box PSNR of the neutral render.
* Pins the process to ONE core (``sched_setaffinity``; torch, OpenCV and numba single-threaded) and
  renders a speech-like control track (jaw/lips every frame, blinks, slow smile/brow/gaze, small head
  motion) with the ``cpu`` backend at 256^2 and 512^2: steady-state ms per frame (p50/p95/mean) and fps.
  The uncached ``cpu-full`` reference is measured too.
* gsplat: single-session fps and batched throughput (sessions per GPU at 30 fps) if CUDA and gsplat
  are available, otherwise recorded as not measured with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def speech_track(n: int, fps: float = 30.0):
    """A deterministic speech-like control track (jaw/lips every frame, blinks, slow smile/brow/head)."""
    from services.renderer.controls import Controls

    out = []
    for i in range(n):
        t = i / fps
        out.append(Controls(
            jaw_open=float(np.clip(0.45 + 0.45 * np.sin(2 * np.pi * 4.0 * t) * np.sin(2 * np.pi * 0.7 * t + 1), 0, 1)),
            lip_round=float(max(0.0, 0.6 * np.sin(2 * np.pi * 1.3 * t))),
            lip_press=float(max(0.0, np.sin(2 * np.pi * 2.1 * t + 0.5)) ** 4),
            lip_stretch=float(max(0.0, 0.4 * np.sin(2 * np.pi * 0.9 * t + 2))),
            smile=float(0.25 + 0.15 * np.sin(2 * np.pi * 0.2 * t)),
            brow_raise=float(0.2 * np.sin(2 * np.pi * 0.3 * t)),
            blink_left=1.0 if (i % 100) < 5 else 0.0,
            blink_right=1.0 if (i % 100) < 5 else 0.0,
            gaze_x=float(0.15 * np.sin(2 * np.pi * 0.1 * t)),
            head_yaw=float(0.08 * np.sin(2 * np.pi * 0.25 * t)),
            head_pitch=float(0.04 * np.sin(2 * np.pi * 0.33 * t)),
            head_roll=float(0.02 * np.sin(2 * np.pi * 0.2 * t)),
        ))
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"frames": len(a), "ms_mean": round(float(a.mean()), 2), "ms_p50": round(float(np.median(a)), 2),
            "ms_p95": round(float(np.percentile(a, 95)), 2), "fps_mean": round(1000.0 / float(a.mean()), 1)}


def bench_build(root: Path) -> tuple[object, dict]:
    import torch

    from services.renderer.controls import Controls
    from services.renderer.face import FaceRenderer
    from services.renderer.replica import ReplicaStore
    from services.renderer.replica.fit import psnr

    torch.set_num_threads(2)
    store = ReplicaStore(root)
    t0 = time.perf_counter()
    replica = store.default()
    seconds = time.perf_counter() - t0
    frame = FaceRenderer(replica, 512, "cpu").render(Controls())
    x0, y0, x1, y1 = replica.face_box(512)
    photo = replica.photo_at(512)
    p = psnr(frame[y0:y1, x0:x1] / 255.0, photo[y0:y1, x0:x1] / 255.0)
    size_mb = (root / "astronaut.npz").stat().st_size / 1e6
    return replica, {
        "photo": "skimage.data.astronaut() (NASA, public domain)",
        "seconds_total": round(seconds, 1),
        "seconds_fit": replica.meta["build"]["fit_seconds"],
        "fit_iterations": replica.meta["build"]["fit_iterations"],
        "gaussians": replica.num_gaussians,
        "psnr_face_box_db_512": round(p, 2),
        "file_mb": round(size_mb, 2),
        "threads": 2,
    }


def bench_cpu(replica, frames: int) -> dict:
    import cv2
    import torch

    from services.renderer.face import FaceRenderer

    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    track = speech_track(frames + 15)
    out: dict = {"pinned_cores": 1, "track": "speech-like: jaw/lips every frame, blinks, slow smile/brow/gaze/head"}
    for size in (256, 512):
        t0 = time.perf_counter()
        renderer = FaceRenderer(replica, size, "cpu")
        init_s = time.perf_counter() - t0
        for c in track[:15]:  # warm-up (numba compile/cache load, first dirty tiles)
            renderer.render(c)
        ms, dirty = [], []
        for c in track[15:]:
            t = time.perf_counter()
            renderer.render(c)
            ms.append((time.perf_counter() - t) * 1000)
            dirty.append(renderer._impl.last_dirty_tiles)
        res = _stats(ms)
        res.update(init_seconds=round(init_s, 3), dirty_tiles_mean=round(float(np.mean(dirty)), 1),
                   tiles=(size // 16) ** 2)
        full = FaceRenderer(replica, size, "cpu-full")
        full.render(track[0])
        ms_full = []
        for c in track[15:15 + 10]:
            t = time.perf_counter()
            full.render(c)
            ms_full.append((time.perf_counter() - t) * 1000)
        res["uncached_reference"] = _stats(ms_full)
        out[f"{size}"] = res
    out["rss_mb_after"] = round(rss_mb(), 1)
    out["rss_mb_peak"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def bench_gsplat(replica, frames: int) -> dict:
    from services.renderer.raster.gsplat_backend import gsplat_available

    ok, why = gsplat_available()
    if not ok:
        return {"measured": False, "reason": why}
    import torch

    from services.renderer.face import FaceRenderer

    track = speech_track(frames)
    out: dict = {"measured": True, "device": torch.cuda.get_device_name(0)}
    for size in (256, 512):
        r = FaceRenderer(replica, size, "gsplat")
        for c in track[:5]:
            r.render(c)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for c in track[:frames]:
            r.render(c)
        torch.cuda.synchronize()
        single = frames / (time.perf_counter() - t)
        batched = {}
        for b in (8, 32, 64):
            rs = [FaceRenderer(replica, size, "gsplat") for _ in range(b)]
            FaceRenderer.render_batch([(x, track[0]) for x in rs])
            torch.cuda.synchronize()
            t = time.perf_counter()
            n = 10
            for k in range(n):
                FaceRenderer.render_batch([(x, track[(k + j) % len(track)]) for j, x in enumerate(rs)])
            torch.cuda.synchronize()
            per_batch = (time.perf_counter() - t) / n
            batched[str(b)] = {"ms_per_batch": round(per_batch * 1000, 2), "frames_per_s": round(b / per_batch, 1)}
        best = max(v["frames_per_s"] for v in batched.values())
        out[f"{size}"] = {"fps_single_session": round(single, 1), "batched": batched,
                          "sessions_per_gpu_at_30fps": int(best // 30)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/renderer.json")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--replica-dir", default=None, help="reuse/keep the built replica here (default: fresh temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.replica_dir) if args.replica_dir else Path(tmp)
        replica, build = bench_build(root)
        result = {
            "benchmark": "renderer",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "build": build,
            "cpu": bench_cpu(replica, args.frames),
            "gsplat": bench_gsplat(replica, min(args.frames, 60)),
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
